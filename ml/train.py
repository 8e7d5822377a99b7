#!/usr/bin/env python3
"""Trains a fraud classifier on a training set written by `prismctl export features`.

The export is one Parquet file: one row per card payment and withdrawal with the features
as they were just before it (prism-fraud's offline store, duplicates dropped), and a
`label` column: true when the payment was reported as fraud at or before the export's
cut-off time. This script

1. splits the rows by event time (the oldest `1 - test_share` to train, the newest to
   test: a model is always judged on payments that happened after the ones it learned
   from, as it will be in production);
2. trains a gradient-boosted tree classifier (scikit-learn's histogram boosting, which
   takes missing values — the features' nulls — as they are);
3. prints the test ROC AUC and the features that matter most (permutation importance on
   the test set: how much the AUC drops when one feature's values are shuffled).

Exit status 0, or 1 when the AUC is below --min-auc (CI runs it that way) or the data
cannot be learned from (one class only, too few rows); 2 for a wrong invocation.
"""

import argparse
import json
import sys

import numpy as np
import pandas as pd
from sklearn.ensemble import HistGradientBoostingClassifier
from sklearn.inspection import permutation_importance
from sklearn.metrics import roc_auc_score

# Columns that identify a row or say where it came from: never features.
NOT_FEATURES = {
    "event_id",
    "account_id",
    "account_version",
    "event_time",
    "feature_time",
    "event_date",
    "event_type",
    "kafka_partition",
    "kafka_offset",
    "feature_set_version",
    "label",
    "reported_at",
}


def load(path):
    frame = pd.read_parquet(path)
    if "label" not in frame.columns or "event_time" not in frame.columns:
        raise SystemExit(f"{path}: not a training set (no label or event_time column)")
    # One row per event, whatever the export did.
    frame = frame.drop_duplicates(subset="event_id")
    return frame.sort_values("event_time", kind="stable").reset_index(drop=True)


def features_of(frame):
    columns = [c for c in frame.columns if c not in NOT_FEATURES]
    x = frame[columns].copy()
    for c in columns:
        if x[c].dtype == bool or str(x[c].dtype) == "boolean":
            x[c] = x[c].astype("float64")
        else:
            x[c] = pd.to_numeric(x[c], errors="coerce").astype("float64")
    return x, columns


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("data", help="the Parquet file `prismctl export features` wrote")
    parser.add_argument("--test-share", type=float, default=0.3,
                        help="share of the newest rows held out for testing (default 0.3)")
    parser.add_argument("--min-auc", type=float, default=None,
                        help="exit 1 when the test ROC AUC is below this")
    parser.add_argument("--top", type=int, default=10, help="features to list (default 10)")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--json", action="store_true", help="print the result as JSON")
    args = parser.parse_args()
    if not 0.05 <= args.test_share <= 0.95:
        parser.error("--test-share must be between 0.05 and 0.95")

    frame = load(args.data)
    x, columns = features_of(frame)
    y = frame["label"].astype(bool).to_numpy()
    cut = int(len(frame) * (1 - args.test_share))
    train_y, test_y = y[:cut], y[cut:]
    if len(frame) < 50 or len(set(train_y)) < 2 or len(set(test_y)) < 2:
        print(
            f"cannot learn from {len(frame)} rows: the training part has "
            f"{int(train_y.sum())} frauds, the test part {int(test_y.sum())}",
            file=sys.stderr,
        )
        return 1
    split_time = frame["event_time"].iloc[cut]

    model = HistGradientBoostingClassifier(random_state=args.seed, max_iter=200)
    model.fit(x.iloc[:cut], train_y)
    scores = model.predict_proba(x.iloc[cut:])[:, 1]
    auc = float(roc_auc_score(test_y, scores))
    importance = permutation_importance(
        model, x.iloc[cut:], test_y, scoring="roc_auc", n_repeats=5, random_state=args.seed
    )
    ranked = sorted(
        zip(columns, importance.importances_mean), key=lambda pair: pair[1], reverse=True
    )[: args.top]

    result = {
        "rows": int(len(frame)),
        "train_rows": int(cut),
        "test_rows": int(len(frame) - cut),
        "train_frauds": int(train_y.sum()),
        "test_frauds": int(test_y.sum()),
        "split_at": str(split_time),
        "features": len(columns),
        "feature_set_version": sorted(frame["feature_set_version"].unique().tolist())
        if "feature_set_version" in frame.columns
        else None,
        "roc_auc": auc,
        "top_features": [{"name": n, "auc_drop": float(v)} for n, v in ranked],
    }
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        print(
            f"{result['rows']} rows ({result['train_frauds'] + result['test_frauds']} reported "
            f"as fraud), {len(columns)} features; trained on the {cut} oldest, tested on the "
            f"{result['test_rows']} newest (from {split_time})"
        )
        print(f"ROC AUC on the test part: {auc:.4f}")
        print("features that matter most (test AUC lost when shuffled):")
        for name, drop in ranked:
            print(f"  {name:<40} {drop:8.4f}")
    if args.min_auc is not None and auc < args.min_auc:
        print(f"ROC AUC {auc:.4f} is below the required {args.min_auc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
