"""Stage download: fetch one source of params.yaml `sources` into data/raw/<name>.

usage: python stages/download.py NAME
"""

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from cxrbench import params as P  # noqa: E402
from cxrbench.io import write_json  # noqa: E402
from cxrbench.sources import ExtractLimits, SourceSpec, fetch  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("name", help="a key of params.yaml `sources`")
    P.add_stage_arguments(ap)
    args = ap.parse_args()
    params = P.from_arguments(args)
    sources = P.section(params, "sources")
    if args.name not in sources:
        raise P.ParamError("sources", f"no source named {args.name!r}; valid names are {sorted(sources)}")
    spec = SourceSpec.from_params(args.name, sources[args.name])
    record = fetch(spec, Path("data/raw") / args.name, ExtractLimits.from_params(params))
    write_json(Path("metrics/download") / f"{args.name}.json", record)
    print(f"{args.name}: {record['files']} files, {record['bytes'] / 1e6:.1f} MB from {record['origin']}")


if __name__ == "__main__":
    main()
