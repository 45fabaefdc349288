// Keeps every file of this folder (listed in files.json by the export) for offline use: installed once while
// connected; afterwards every request of the page is answered from the cache first. The page registers
// sw.js?v=<model version>, so a new export (another version) installs afresh and removes the old copy.

const VERSION = new URL(self.location.href).searchParams.get("v") || "0";
const CACHE = `toptune-offline-${VERSION}`;

self.addEventListener("install", (event) => {
  event.waitUntil((async () => {
    const list = await (await fetch("files.json", { cache: "no-store" })).json();
    const cache = await caches.open(CACHE);
    await cache.addAll(list.files.map((f) => new Request(f, { cache: "reload" })));
    await self.skipWaiting();
  })());
});

self.addEventListener("activate", (event) => {
  event.waitUntil((async () => {
    for (const name of await caches.keys()) {
      if (name.startsWith("toptune-offline-") && name !== CACHE) await caches.delete(name);
    }
    await self.clients.claim();
  })());
});

self.addEventListener("fetch", (event) => {
  if (event.request.method !== "GET") return;
  event.respondWith((async () => {
    const cache = await caches.open(CACHE);
    const hit = await cache.match(event.request, { ignoreSearch: true });
    return hit || fetch(event.request);
  })());
});
