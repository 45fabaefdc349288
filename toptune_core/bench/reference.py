"""Near-duplicate pairs and session groups of the reference (lite0, one view, 224 px) against the 288-px first
view: could the first stage of a progressive run serve as the reference? (README, "Progressive top-tuning").

Run: ``python -m toptune_core.bench.reference --data DIR`` (uses ``$TOPTUNE_HOME``'s cache)."""
import argparse
import time

import numpy as np
from sklearn.metrics import adjusted_rand_score

from toptune_core.data.dataset import load_dataset
from toptune_core.features.extractor import FeatureExtractor
from toptune_core.features.cache import FeatureCache, get_features
from toptune_core.data.duplicates import DUPLICATE_THRESHOLD
from toptune_core.data.groups import session_groups, SESSION_SIMILARITY


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument('--data', required=True)
    args = parser.parse_args()
    ds = load_dataset(args.data)
    c = FeatureCache()
    f = {}
    for r in (224, 288):
        e = FeatureExtractor('tf_efficientnet_lite0', views='1', resolution=r)
        t = time.time()
        fs = get_features(ds, e, c)
        f[r] = fs.entry.features[:, 0]
        print(r, 'px:', round(time.time() - t, 1), 's', flush=True)
    for r in f:
        f[r] = f[r] / np.linalg.norm(f[r], axis=1, keepdims=True)
    S = {r: f[r] @ f[r].T for r in f}
    iu = np.triu_indices(len(f[224]), 1)
    a, b = S[224][iu], S[288][iu]
    print("corr of pair similarities", np.corrcoef(a, b)[0, 1])
    ref = set(zip(*np.nonzero(np.triu(S[224] >= DUPLICATE_THRESHOLD, 1))))
    print("pairs at 224 >= %.2f: %d" % (DUPLICATE_THRESHOLD, len(ref)))
    for t in np.arange(0.86, 0.95, 0.005):
        got = set(zip(*np.nonzero(np.triu(S[288] >= t, 1))))
        jaccard = len(got & ref) / max(1, len(got | ref))
        print(f"288 threshold {t:.3f}: {len(got)} pairs, {len(got & ref)} shared with 224's, jaccard {jaccard:.3f}")
    g224 = session_groups(f[224][:, None, :])
    for t in np.arange(SESSION_SIMILARITY - 0.04, SESSION_SIMILARITY + 0.041, 0.01):
        g288 = session_groups(f[288][:, None, :], similarity=t)
        print(f"session groups: 224 at {SESSION_SIMILARITY}: {len(set(g224))} groups; 288 at {t:.2f}: "
              f"{len(set(g288))} groups, ARI {adjusted_rand_score(g224, g288):.3f}")


if __name__ == "__main__":
    main()
