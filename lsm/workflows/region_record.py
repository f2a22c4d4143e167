"""What region a run was trained in: recorded in the run, checked whenever it is used.

A run keeps the text of its region spec (``model.json`` ``spec`` / ``specs``) and, per
region, a record (``model.json`` ``region_record``)::

    {"<region name>": {"dir": "<absolute folder the spec's relative paths resolved from>",
                       "files": {"<spec key>": "<sha256 of the file it named>", ...},
                       "identity": "<sha256 of the spec with each file replaced by its
                                    sha256 (name, description, citation, chunks left out)>"}}

So a map of "the run's own region" comes from the stored spec with its data files
resolved as they were at training time and checked against their checksums, never from
whatever spec file or built-in region of the same name the current folder offers
(:func:`run_spec`). A region the user names (``--region``) whose name is one the run was
trained in must be the same data and spec (:func:`check_region`): a region name stands
for the data behind the run's statistics and its "seen" landslides. A fine-tune run also
carries the records of its source run, so its source regions are known too.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

from lsm.config.spec import RegionSpec, load_region, parse_region, parse_yaml
from lsm.errors import ArtifactError, ChecksumError, LsmError, SpecError
from lsm.workflows.runs import MODEL_JSON, Run

#: Key of the records in ``model.json``.
RECORD = "region_record"
#: Spec keys that do not change what a region is (left out of its identity).
COSMETIC = ("name", "description", "citation", "chunks")

# (resolved path, size, mtime_ns) -> sha256: a file is hashed once per process
_HASHES: dict[tuple[str, int, int], str] = {}


def _sha256(path: Path) -> str:
    from lsm.io.artifacts import sha256_file

    st = path.stat()
    key = (str(path.resolve()), st.st_size, st.st_mtime_ns)
    if key not in _HASHES:
        _HASHES[key] = sha256_file(path)
    return _HASHES[key]


def data_checksums(spec: RegionSpec, *, progress: bool = False) -> dict[str, str]:
    """sha256 of every data file ``spec`` names, keyed by the spec key naming it.

    A downloadable file (``url`` + ``sha256``) counts as its declared sha256: whichever
    copy is found (data folder, cache, download) is checked against it on the way.
    """
    from lsm.io.fetch import resolve_file

    out: dict[str, str] = {}
    for key, ref in spec.file_refs().items():
        path = resolve_file(ref, base_dir=spec.base_dir, where=spec.where(key),
                            progress=progress)
        out[key] = ref.sha256 if (ref.url is not None and ref.sha256) else _sha256(path)
    return out


def _identity(spec: RegionSpec, files: dict[str, str]) -> str:
    data = spec.model_dump(mode="json", exclude_defaults=True,
                           exclude={"base_dir", "source_file", *COSMETIC})
    for key, digest in files.items():
        node: Any = data
        if key.startswith("factors."):  # factor names may hold dots
            parts = ["factors", key[len("factors."):-len(".path")], "path"]
        else:
            parts = key.split(".")
        for p in parts[:-1]:
            node = node[p]
        node[parts[-1]] = {"sha256": digest}
    text = json.dumps(data, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def record_region(spec: RegionSpec, *, progress: bool = False) -> dict[str, Any]:
    """The record of ``spec`` that a run stores (see the module docstring)."""
    files = data_checksums(spec, progress=progress)
    return {"dir": str(Path(os.path.abspath(spec.base_dir))), "files": files,
            "identity": _identity(spec, files)}


def records(run: Run) -> dict[str, dict[str, Any]]:
    """The region records of ``run`` (empty for a run written before they existed)."""
    rec = run.meta.get(RECORD)
    if rec is None:
        return {}
    if not isinstance(rec, dict) or not all(isinstance(v, dict) for v in rec.values()):
        raise ArtifactError(f"{run.path / MODEL_JSON}: {RECORD}: malformed (not an object of "
                            "region records)")
    return rec


def trained_names(run: Run) -> list[str]:
    """Names of the regions whose data the run's models were trained on (its own, each
    pooled source, and the regions of the fine-tune chain the run has records of)."""
    names = list(records(run))
    for n in [run.region, *(run.meta.get("regions") or []),
              *(run.meta.get("source_regions") or [])]:
        if n not in names:
            names.append(str(n))
    return names


def run_spec(run: Run) -> RegionSpec:
    """The region ``run`` was trained in (a pooled run: its first region), from the spec
    text in its ``model.json``, with data files resolved from the folder its spec was in
    at training time and checked against the recorded checksums.

    Nothing is looked up by name or relative to the current folder: a built-in region
    or a spec file of the same name elsewhere is never taken for the run's region.
    """
    where = f"{run.path / MODEL_JSON}: spec"
    text = run.meta.get("spec")
    if not isinstance(text, str):
        raise ArtifactError(f"{where}: missing; name the region to map with --region")
    try:
        data = parse_yaml(text)
    except Exception as err:  # yaml errors: a tampered model.json
        raise ArtifactError(f"{where}: not valid YAML ({err})") from None
    name = data.get("name") if isinstance(data, dict) else None
    rec = records(run).get(str(name))
    if rec is None:
        return _legacy_spec(run, where)
    base = rec.get("dir")
    if not isinstance(base, str) or not os.path.isabs(base):
        raise ArtifactError(f"{run.path / MODEL_JSON}: {RECORD}.{name}.dir: not an absolute "
                            f"folder ({base!r})")
    spec = parse_region(data, source=where, base_dir=Path(base))
    spec.source_file = run.path / MODEL_JSON
    try:
        _compare(run, spec, rec)
    except LsmError as err:
        raise type(err)(f"{run.path}: the data of its region {spec.name!r} is not what it "
                        f"was trained on ({err}); name the region to map with --region"
                        ) from None
    return spec


def _legacy_spec(run: Run, where: str) -> RegionSpec:
    """A run written before region records: its spec file only where it was recorded by
    an absolute path and still holds the stored spec."""
    from lsm.config.spec import dump_region

    spec_file = run.meta.get("spec_file")
    if not isinstance(spec_file, str) or not os.path.isabs(spec_file):
        raise SpecError(f"{run.path}: written by an older lsm, it records its region spec "
                        f"as {spec_file!r}, relative to the folder it ran in; name the region "
                        "to map with --region")
    spec = load_region(spec_file)
    if dump_region(spec) != run.meta.get("spec"):
        raise SpecError(f"{spec_file}: differs from the spec stored in {where}; name the "
                        "region to map with --region")
    return spec


def _compare(run: Run, spec: RegionSpec, rec: dict[str, Any]) -> None:
    """Raise unless ``spec`` resolves to the data and settings recorded in ``rec``."""
    files = rec.get("files")
    if not isinstance(files, dict):
        raise ArtifactError(f"{run.path / MODEL_JSON}: {RECORD}.{spec.name}.files: malformed")
    now = data_checksums(spec)
    for key in sorted(set(files) | set(now)):
        if key not in now or key not in files:
            raise SpecError(f"{spec.where(key)}: {'not ' if key not in now else ''}in the "
                            f"spec the run was trained on")
        if now[key] != files[key]:
            raise ChecksumError(f"{spec.where(key)}: file sha256 {now[key][:12]}... differs "
                                f"from {files[key][:12]}... at training time")
    if _identity(spec, now) != rec.get("identity"):
        raise SpecError(f"{spec.where('<top>')}: settings differ from the spec the run was "
                        "trained on")


def check_region(run: Run, spec: RegionSpec) -> None:
    """Refuse a region the user named whose name is one ``run`` was trained in but whose
    data or settings differ (one line). Another name is any other region."""
    if spec.name not in trained_names(run):
        return
    rec = records(run).get(spec.name)
    if rec is None:  # no record (an older lsm): only the run's own stored spec can tell
        from lsm.config.spec import dump_region

        if spec.name != run.region or dump_region(spec) == run.meta.get("spec"):
            return
        raise SpecError(f"{spec.source_file or spec.name}: region {spec.name!r} is a region "
                        f"run {run.path} was trained in, but this spec differs from the one "
                        "it stored (or the run keeps no record of it); give it another name "
                        "to map it as a new region")
    try:
        _compare(run, spec, rec)
    except LsmError as err:
        raise type(err)(f"{err}; region {spec.name!r} of run {run.path} was trained on other "
                        "data: give this region another name to map it as a new region"
                        ) from None


def region_for_run(run: Run, region: str | Path | None) -> RegionSpec:
    """The spec to map or explain: ``region`` (checked by :func:`check_region`) when the
    user named one, else the run's own (:func:`run_spec`)."""
    if region is None:
        return run_spec(run)
    spec = load_region(region)
    check_region(run, spec)
    return spec


def region_identity(run: Run, spec: RegionSpec) -> str | None:
    """Which region the run was trained in ``spec`` is (its name there), or None.

    By name once :func:`check_region` passed; a region under another name is recognised
    by its identity (same data, same settings).
    """
    names = trained_names(run)
    if spec.name in names:
        return spec.name
    recs = records(run)
    if not recs:
        return None
    try:
        ident = _identity(spec, data_checksums(spec))
    except LsmError:
        return None
    for name, rec in recs.items():
        if rec.get("identity") == ident:
            return name
    return None
