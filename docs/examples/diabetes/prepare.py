"""Split a public data set over three hospitals, as their own exports.

The data: the diabetes study of Efron, Hastie, Johnstone and Tibshirani,
"Least Angle Regression" (Annals of Statistics, 2004): 442 patients, their
age, sex, body mass index, mean blood pressure and six blood serum
measurements, and a measure of disease progression one year later. It
ships with scikit-learn (``sklearn.datasets.load_diabetes``, the
unscaled values), so nothing is downloaded.

Each patient goes to one of three hospitals (h1, h2, h3, by row), gets
that hospital's own record number (seven digits with leading zeros: the
``hospital-record`` person-key scheme, not an ID number) and a visit
timestamp, as pandas writes them. h1 and h2 export Parquet, h3 a CSV.

    python3 prepare.py SPACE_DIR

writes SPACE_DIR/h1/diabetes.parquet, SPACE_DIR/h2/diabetes.parquet and
SPACE_DIR/h3/diabetes.csv, and prints the pooled and per-hospital row
counts.
"""

import pathlib
import sys

import pandas as pd
from sklearn.datasets import load_diabetes


def hospitals() -> dict[str, pd.DataFrame]:
    d = load_diabetes(scaled=False, as_frame=True).frame
    d = d.rename(columns={"s6": "glucose", "target": "progression"})
    d["age"] = d["age"].astype("int64")
    d["sex"] = d["sex"].astype("int64")
    out = {}
    for n, name in enumerate(["h1", "h2", "h3"]):
        part = d.iloc[n::3].copy()
        # The hospital's own record numbers: leading zeros matter.
        part.insert(0, "mrn", [f"{1000 * (n + 1) + i:07d}" for i in range(len(part))])
        # A visit time per patient, in 2024: a pandas timestamp column.
        part["visit"] = pd.Timestamp("2024-01-08 09:30") + pd.to_timedelta(
            [7 * (i % 52) for i in range(len(part))], unit="D"
        )
        out[name] = part[
            ["mrn", "visit", "age", "sex", "bmi", "bp", "glucose", "progression"]
        ].reset_index(drop=True)
    return out


def main() -> None:
    space = pathlib.Path(sys.argv[1])
    parts = hospitals()
    for name, part in parts.items():
        (space / name).mkdir(parents=True, exist_ok=True)
        if name == "h3":
            part.to_csv(space / name / "diabetes.csv", index=False)
        else:
            part.to_parquet(space / name / "diabetes.parquet", index=False)
    sizes = ", ".join(f"{n} {len(p)}" for n, p in parts.items())
    print(f"{sum(len(p) for p in parts.values())} patients: {sizes}")


if __name__ == "__main__":
    main()
