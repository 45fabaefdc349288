"""Reliability and security (issue 6): what was thrown at toptune, and where each is tested.

Counts: about 130 distinct bad inputs (65 photos, 35 dataset folders, 29 uploads; plus 420 fuzz examples and
tests/test_archive.py), 17 injected faults, 10 concurrent users (and 10 concurrent run-store sessions).

Everything uses real leaf photos of the demo dataset (re-encoded, damaged or rewritten as described), the real
tf_efficientnet_lite0 weights, real subprocesses, real signals and real file systems. Each bad input must give
one clear line (``ImageError``/``DatasetError``/``ArchiveError``, all ``ToptuneError``; exit status 2 and one
``error:`` line on the command line) and change nothing else.

Bad photos - test_bad_images.py
    read upright as RGB, compared with the original pixels (20 encodings): PNG with alpha (transparent border
    composited on white), palette PNG, palette PNG with a transparent colour, 16-bit grayscale PNG, 48-bit RGB
    PNG, grayscale and grayscale+alpha PNG, 1-bit PNG, grayscale JPEG, CMYK JPEG, progressive JPEG, MPO (phone
    JPEG with a second picture), lossy WebP, lossless WebP with alpha, AVIF, animated GIF (first frame), BMP,
    LZW TIFF, CMYK TIFF, 32-bit float TIFF; also as named file objects (the uploader's form).
    EXIF orientations 2-8 on a non-square JPEG, EXIF orientation in a PNG, corrupt EXIF block: shown upright;
    an EXIF-rotated photo reaches the model as the same tensor, and gets the same prediction, as the upright one.
    refused with a message naming the file and the problem (25 kinds): JPEG truncated at half and after the
    header, truncated PNG and WebP, PNG with damaged pixel data, zero bytes (bytes and file), a text file and an
    HTML error page renamed .jpg, HEIC (real, from pillow-heif: by extension, renamed .jpg, as bytes, as a named
    upload), PDF, EPS (Pillow would call Ghostscript), SVG, a zip, an ICO (a decoder not offered), a 20000x1
    strip (the model's resize would make it gigabytes), a folder named .jpg, a missing file, a FIFO and
    /dev/zero (would block or never end; checked with a timeout).
    too many pixels: a genuine 100-megapixel PNG (300 kB on disk, 300 MB decoded), JPEG headers claiming 100 MP
    and 144 MP, a PNG header claiming 4.3 gigapixels: all refused from the header, in a subprocess whose peak
    memory must not grow by 20 MB; a genuine 16 MP page reads, and is refused under a 10 MP limit.
    command line ``predict``: zero bytes, HEIC, the 100 MP bomb, a folder: exit 2, one line.
Bad datasets - test_bad_datasets.py (missing folder, one class, no images on the command line: tests/test_toptuning.py)
    refused: empty folder, only hidden folders and junk, one class (plus an empty class folder), only documents
    and HEIC files, photos without class folders, a zip given as the folder, a missing folder (in process; three
    of them also through the command line, where no run may be recorded).
    a class with a single photo: warned about, then the run fails with one line and is recorded as failed.
    2 x 2,500 files (hard links): counted, fingerprinted, split stratified. A photo deleted between the scan
    and the fingerprint: one line.
    skipped and listed with a reason: .DS_Store, AppleDouble ``._`` files, Thumbs.db, a hidden folder of photos,
    notes.txt, a HEIC photo, a broken link, a FIFO named .jpg, a symlink loop, a Latin-1 (non-UTF-8) file name,
    __MACOSX, a photo outside any class folder.
    one messy dataset end to end on the command line: spaces and non-ASCII in the folder, class and file names
    (French accents, an em dash, Japanese), ``IMG 0001.jpg`` in every class (three different photos, three
    cache rows), desktop.ini and .DS_Store, and 6 unreadable photos (empty, truncated, text, HEIC renamed .jpg,
    a 100 MP header, a 200:1 strip) that are skipped, counted and each named with its reason; predict on a
    non-ASCII path.
Bad uploads - test_bad_uploads.py (safe_extract_zip itself: tests/test_archive.py - zip slip ``../``, ``..\\``,
    absolute and drive paths, symbolic links, zip bombs by ratio, total size and entry count, entries larger than
    declared, bad CRC, not a zip, nested zips left closed, dataset-root discovery, cancel, byte-mutation fuzz)
    through the upload path (save -> unpack -> scan): zip slip, absolute path, symlink to /etc/passwd, ratio
    bomb, 20,001-entry bomb: refused, nothing but the zip kept, the next good upload works; nested zip not
    opened; five zips with no usable class folders; empty, text, JPEG and truncated "zips"; an upload name with
    ``../``; the same zip twice; single photos: HEIC (named and renamed), empty, HTML, truncated, PNG with
    alpha; the size limit of single uploads (pending the dashboard's limit: xfail until it exists).
    saved models: a pickle whose unpickling writes a file, uploaded as a photo and inside a dataset zip, is never
    loaded; a run's model.joblib swapped in place or linked in from outside is refused unread (SHA-256 recorded
    at save time, own folder only); a scan of the code finds one unpickling call, RunStore.load_model, and no
    np.load without allow_pickle=False.
Faults - test_faults.py (17 injected)
    SIGKILL in the middle of feature extraction (read from the progress bar), of a fine-tune (after its first
    epoch) and of an Eden download (a throttled local server): no cache entry that reads as complete, the run
    ``interrupted`` at the next store open with its finished epochs kept, earlier runs and cache entries
    byte-for-byte unchanged, and a rerun that completes (the download resumes with a Range request).
    two processes top-tuning the same dataset and backbone at once: one extracts, one waits and reuses: one entry.
    disk full: a run whose feature file cannot be written (RLIMIT_FSIZE) fails with one line and is recorded;
    the run store filled until writes fail, under a file-size limit and on a real 1 MB tmpfs (ENOSPC, where
    mounting is allowed): every committed run intact, no temporary file left, the store still opens and reads.
    read-only data folder (root drops CAP_DAC_OVERRIDE, so permissions bind it too): toptune, runs and predict
    each exit 2 with one line naming the folder; nothing changed. A data folder path under a regular file.
    five run-store writers (5 transactions and a 4 MB model per run) SIGKILLed at random moments: integrity_check
    ok, every run reported complete is complete with loadable files, the one in flight ``interrupted``.
    a run store overwritten with garbage from outside: one line, the file left untouched for recovery.
Load - test_concurrency.py
    10 users x 6 uploads (path, JPEG bytes, PNG with alpha, EXIF-rotated, WebP, one truncated) through one shared
    Predictor and model while an extraction runs on the same model: every answer equal to the answer alone,
    every bad upload refused, the extraction's features equal to a sequential extraction, memory growth under
    1 GB; ``pytest -s`` prints requests, failures, median/p90/worst latency and memory.
    10 sessions writing 5 runs each to the run store at once, with a reader: 50 runs, no error.
    a session waiting for another session's extraction of the same entry (the lock) cancels within a second.
Fuzz - test_fuzz.py: the photo reader (300 examples) and the zip upload path (120 examples).
"""
