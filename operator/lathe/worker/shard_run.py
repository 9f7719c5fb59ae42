"""The two halves of a search split over Jobs (spec.search.parallelism), on the pipeline's own stages:

* `build_shard`: prepare (intake, data checks, baseline) -> build and validate this Job's share of the
  candidates (shards.split) -> hand each one over as soon as it is built (handover.py), then the manifest.
  Candidates a killed earlier attempt already handed over are reused, not rebuilt.
* `benchmark_shards`: prepare -> read every shard's hand-over back (sha256 checked) -> the pipeline's
  finish: the interleaved benchmark of the baseline and every passed candidate on this node, the budget
  gate, selection and reports, exactly as one Job would. Candidates of a build Job that failed for good
  are in the table as failed, with the operator's reason.

The Job's identity comes from the operator's environment: LATHE_RESOURCE (namespace/name), LATHE_GENERATION,
LATHE_GPU_ARCH (an architecture's search)."""

from __future__ import annotations

import json
import logging
import os
import time
from pathlib import Path

from lathe.api.spec import ModelOptimizationSpec, runtimes_of
from lathe.api.status import TERMINATION_LIMIT, CandidateResult, Verdict, WorkerResult
from lathe.storage import StorageError

from .errors import InvalidInput, WorkerError
from .handover import (
    Record,
    Store,
    base_uri,
    fetch_candidate,
    get_manifest,
    get_record,
    put_candidate,
    put_manifest,
    shard_key,
)
from .progress import ProgressFn
from .shards import split

log = logging.getLogger("lathe.worker.shards")


def _identity() -> tuple[str, int, str | None]:
    return (os.environ.get("LATHE_RESOURCE", ""), int(os.environ.get("LATHE_GENERATION") or 1),
            os.environ.get("LATHE_GPU_ARCH") or None)


def _store(spec: ModelOptimizationSpec) -> Store:
    resource, generation, arch = _identity()
    try:
        return Store(base_uri(spec, resource, generation, arch))
    except WorkerError:
        raise
    except (StorageError, ValueError) as e:
        raise InvalidInput("handover", f"spec.artifacts {spec.artifacts}: {e}") from e


def _storage(what: str, e: Exception) -> WorkerError:
    """A store that refuses us is the user's to fix (not retried); anything else is a crash to retry."""
    if isinstance(e, StorageError):
        return InvalidInput("handover", f"{what}: {e}", kind=e.reason)
    return WorkerError("handover", f"{what}: {type(e).__name__}: {e}")


def build_shard(spec: ModelOptimizationSpec, workdir: Path, shard: int, shards: int,
                progress: ProgressFn | None = None) -> dict:
    """Build and validate share `shard` of `shards`; returns the summary for the termination message."""
    from .tasks import pipeline_for  # noqa: PLC0415

    if not 1 <= shard <= shards:
        raise InvalidInput("spec", f"shard {shard} of {shards}: want 1 <= shard <= shards")
    t0 = time.time()
    store = _store(spec)
    pipe = pipeline_for(spec, workdir, progress)
    base = pipe.prepare(profile=False)
    mine = split(pipe.all_candidates, shards)[shard - 1]
    records: dict[str, Record] = {}
    try:
        for c in mine:
            rec = get_record(store, shard, c.name)
            if rec is not None:  # handed over by an attempt that was killed afterwards
                log.info("candidate %s: reusing what an earlier attempt handed over", c.name)
                records[c.name] = rec
    except (OSError, StorageError) as e:
        raise _storage(f"reading {store.where(shard_key(shard))}", e) from e
    reused = list(records)
    log.info("build Job %d/%d: %s (of %d candidates)%s", shard, shards, ", ".join(c.name for c in mine),
             len(pipe.all_candidates), f"; reused {', '.join(reused)}" if reused else "")

    moved = {"seconds": 0.0, "bytes": 0}

    def hand_over(b) -> None:
        t = time.monotonic()
        try:
            rec = records[b.result.name] = put_candidate(store, shard, b, workdir / "candidates" / b.result.name)
        except (OSError, StorageError) as e:
            raise _storage(f"handing {b.result.name} over to {store.where(shard_key(shard))}", e) from e
        moved["seconds"] += time.monotonic() - t
        moved["bytes"] += sum((workdir / "candidates" / b.result.name / f).stat().st_size for f in rec.files)

    pipe.build_all([c for c in mine if c.name not in records], hand_over)
    try:
        put_manifest(store, shard, shards, _identity()[2], [c.name for c in pipe.all_candidates],
                     [c.name for c in mine], base.result.model_dump(by_alias=True, mode="json"), time.time() - t0)
    except (OSError, StorageError) as e:
        raise _storage(f"writing the manifest to {store.where(shard_key(shard))}", e) from e
    cands = [{"name": c.name, "verdict": records[c.name].result.get("verdict"),
              "reason": records[c.name].result.get("reason", "")} for c in mine]
    return {"shard": shard, "shards": shards, "handover": store.where(shard_key(shard)), "candidates": cands,
            "reused": reused, "seconds": round(time.time() - t0, 1),
            "handoverSeconds": round(moved["seconds"], 3), "handoverBytes": moved["bytes"]}


def compact_summary(summary: dict) -> str:
    """The build Job's summary under the termination message's limit: reasons shortened, then dropped."""
    for n in (300, 120, 40, 0):
        doc = {**summary, "candidates": [{**c, "reason": c["reason"][:n]} for c in summary["candidates"]]}
        text = json.dumps(doc, separators=(",", ":"))
        if len(text.encode()) < TERMINATION_LIMIT:
            return text
    raise ValueError("build summary does not fit the termination message")


def benchmark_shards(spec: ModelOptimizationSpec, workdir: Path, shards: int, failed: dict[int, str],
                     progress: ProgressFn | None = None, bench_seconds: float | None = None) -> WorkerResult:
    """Every shard's candidates read back and timed here together against the baseline; selection and the
    reports as in one Job. `failed`: shard -> why its build Job failed for good."""
    from .backends.base import Artifact  # noqa: PLC0415
    from .stages import Built  # noqa: PLC0415
    from .tasks import pipeline_for  # noqa: PLC0415

    t0 = time.time()
    store = _store(spec)
    pipe = pipeline_for(spec, workdir, progress, bench_seconds)
    base = pipe.prepare()
    everything = pipe.all_candidates
    names = [c.name for c in everything]
    parts = split(everything, shards)
    built: dict[str, Built] = {}
    pipe.progress("handover", 0.0, f"reading {shards - len(failed)} build Job(s) from {store.uri}")
    read_seconds, read_bytes = 0.0, 0
    for k, part in enumerate(parts, start=1):
        if k in failed:
            for c in part:
                built[c.name] = Built(CandidateResult(
                    name=c.name, runtime=str(c.runtime or runtimes_of(spec)[0]), metric=pipe.metric,
                    verdict=Verdict.failed, reason=f"build Job {k}/{shards} failed: {failed[k]}"[:600]))
            continue
        try:
            man = get_manifest(store, k)
        except (OSError, StorageError, ValueError) as e:
            raise _storage(f"reading {store.where(shard_key(k))}", e) from e
        if man is None:
            raise InvalidInput("handover", f"build Job {k}/{shards} finished but its hand-over is not at "
                                           f"{store.where(shard_key(k))} as this Job sees it: spec.artifacts must be "
                                           "storage every build and benchmark Job reaches (a ReadWriteMany claim, a "
                                           "path shared by the nodes, or s3://)")
        if man.get("all") != names:  # the same spec, another candidate list: not something a retry changes
            raise InvalidInput("handover", f"build Job {k}/{shards} searched {man.get('all')}, this Job {names}: "
                                           "the default search depends on the model family and, on a GPU, its "
                                           "compute capability; name spec.candidates, or pin the GPUs with "
                                           "spec.target.gpu.architectures")
        if man.get("candidates") != [c.name for c in part]:
            raise WorkerError("handover", f"build Job {k}/{shards} built {man.get('candidates')}; this Job's split "
                                          f"gives it {[c.name for c in part]} (worker versions differ?)")
        theirs = (man.get("baseline") or {}).get("accuracy")
        if theirs is not None and base.result.accuracy is not None and abs(theirs - base.result.accuracy) > 1e-6:
            pipe.warnings.append(f"build Job {k}/{shards} measured the baseline at {theirs:.6f}, this Job at "
                                 f"{base.result.accuracy:.6f}: its candidates' drops are against its own")
        for c in part:
            cdir = workdir / "candidates" / c.name
            try:
                rec = get_record(store, k, c.name)
                if rec is None:
                    raise WorkerError("handover", f"{store.where(shard_key(k))}/{c.name}: no record")
                t = time.monotonic()
                fetch_candidate(store, k, rec, cdir)
                read_seconds += time.monotonic() - t
            except (OSError, StorageError) as e:
                raise _storage(f"reading {c.name} from {store.where(shard_key(k))}", e) from e
            handed = set(rec.files) | {str(Path(f).parent) for f in rec.files}  # a causal LM's artifact is a folder
            if not set(rec.artifact_files) <= set(rec.files) or (rec.artifact and rec.artifact not in handed):
                raise WorkerError("handover", f"{store.where(shard_key(k))}/{c.name}: its record names files it "
                                              "did not hand over")
            read_bytes += sum((cdir / f).stat().st_size for f in rec.files)
            res = CandidateResult.model_validate(rec.result)
            res.artifact = str(cdir / rec.artifact) if rec.artifact else None
            art = (Artifact(runtime=rec.runtime, files=[cdir / f for f in rec.artifact_files], meta=rec.meta)
                   if rec.artifact_files else None)
            runner = None
            if rec.runnable and art is not None:
                runner = pipe.reload(rec.runtime, art)
            built[c.name] = Built(res, art, runner, rec.details)
            pipe.details["candidates"][c.name] = rec.details
    pipe.progress("handover", 1.0, f"{sum(b.runner is not None for b in built.values())} candidate(s) to time; read "
                                   f"{read_bytes} bytes in {read_seconds:.3f}s (sha256 checked)")
    result = pipe.finish(base, [built[n] for n in names], t0)
    _forget_older_generations(spec)
    return result


def _forget_older_generations(spec: ModelOptimizationSpec) -> None:
    """The hand-overs of this resource's older generations can never be read again (a new generation
    supersedes their Jobs): removed once this one is through. Best effort: a failure costs a warning."""
    resource, generation, _ = _identity()
    try:
        root = Store(f"{spec.artifacts.rstrip('/')}/{resource}")
        for folder in list(root.folders("")):
            if folder.startswith("generation-") and folder[len("generation-"):].isdigit() \
                    and int(folder[len("generation-"):]) < generation:
                for sub in ["", *[f for f in root.folders(folder) if f.startswith("sm")]]:
                    root.remove(f"{folder}/{sub}/shards".replace("//", "/"))
    except (OSError, StorageError, WorkerError) as e:
        log.warning("older hand-overs of %s not removed: %s", resource, e)
