"""The rule for RESULTS_VERSION: a change to code that can move a number must be looked at."""
import hashlib
from pathlib import Path

from pipeline import version

ROOT = Path(__file__).resolve().parents[1]


def current_hashes():
    return {path: hashlib.sha256((ROOT / path).read_bytes()).hexdigest()[:12] for path in version.results_files()}


def test_results_files_are_recorded():
    now = current_hashes()
    changed = sorted(p for p in set(now) | set(version.RESULTS_FILES) if now.get(p) != version.RESULTS_FILES.get(p))
    table = "{" + ", ".join(f"{p!r}: {h!r}" for p, h in sorted(now.items())) + "}"
    assert not changed, (f"{', '.join(changed)} changed: if it can move a number, bump RESULTS_VERSION; "
                         f"then update RESULTS_FILES to: {table}")
