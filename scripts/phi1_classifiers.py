#!/usr/bin/env python3
"""Reference check of `canon data filter`'s classifiers with scikit-learn on the same features.

Reads DIR/labelled-embeddings.json (written by `canon data filter --out DIR`: the labelled
sample's MiniLM embeddings and labels, split into `fit` and `heldout`) and prints the held-out
accuracy and ROC-AUC of scikit-learn's RandomForestClassifier (the paper's classifier) and
LogisticRegression, with settings matching canon's (200 trees, max depth 12, sqrt(d) features
per split; L2 logistic regression with balanced classes). Not a test dependency.

    ~/.cache/canon-peers/venv/bin/python scripts/phi1_classifiers.py runs/phi1
"""

import json
import sys

from sklearn.ensemble import RandomForestClassifier
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import accuracy_score, roc_auc_score


def main(folder: str) -> None:
    with open(f"{folder}/labelled-embeddings.json") as f:
        d = json.load(f)
    xf, yf = d["fit"]["x"], d["fit"]["y"]
    xh, yh = d["heldout"]["x"], d["heldout"]["y"]
    pos = sum(yh) / len(yh)
    print(f"labels: {d['label_method']}")
    print(f"fit {len(xf)}, held out {len(xh)}, majority class {max(pos, 1 - pos):.3f}")
    models = {
        "random forest": [
            RandomForestClassifier(
                n_estimators=200, max_depth=12, max_features="sqrt", random_state=s
            )
            for s in range(5)
        ],
        "logistic regression": [
            LogisticRegression(C=1.0 / (1e-3 * len(xf)), class_weight="balanced", max_iter=5000)
        ],
    }
    for name, ms in models.items():
        accs, aucs = [], []
        for m in ms:
            m.fit(xf, yf)
            p = m.predict_proba(xh)[:, 1]
            accs.append(accuracy_score(yh, p >= 0.5))
            aucs.append(roc_auc_score(yh, p))
        n = len(ms)
        print(
            f"{name}: held-out accuracy {sum(accs) / n:.3f} (min {min(accs):.3f}, max {max(accs):.3f}, "
            f"{n} seed{'s' if n > 1 else ''}), ROC-AUC {sum(aucs) / n:.3f}"
        )


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "runs/phi1")
