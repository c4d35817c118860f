"""Fitting catalogs larger than memory: the observed rows are streamed from a Parquet file.

``popsed fit`` switches to this path for Parquet catalogs with more than
:data:`engine.catalog.STREAM_MIN_ROWS` rows (``--stream auto``, the default) or when asked
(``--stream on``).  Nothing holds the whole catalog:

1. one streaming pass over the file (:meth:`engine.catalog.CatalogStream.scan`) validates it with the
   reader's rules, counts the usable rows (complete in every band, with a spec-z when the redshift is
   observed, passing the selection), feeds pass 1 of the noise model
   (:class:`~engine.population.noise.NoiseAccumulator`) and keeps two *resident* random samples: up to
   ``val_cap`` validation rows and up to ``train_cap`` training rows (bottom-k of a per-row hash, i.e.
   uniform samples without replacement, whatever the chunking);
2. a second pass finishes the noise model;
3. training (:class:`StreamingTrainer`): the feature standardisation and the noise floor come from the
   resident rows, validation uses the resident validation rows, and every step's observed batch
   (``obs_cap`` rows) is drawn from a *pool* of ``pool_chunks`` chunks of the file.  The pool of step
   ``i`` of a member is the chunks picked (by a hash of the member seed and the step) at steps
   ``i - pool_chunks + 1 .. i``, so each step reads at most one new chunk, the pool is a pure function of
   (seed, step) and the rows taken from it come from the member's generator: same seed, same run, and
   ``--resume`` continues exactly.

The train/validation split is a per-row hash of the seed and the row's number in the file (a row is a
validation row with probability ``val_fraction``), so it does not depend on how the file is chunked.
``observed.parquet`` in the run holds only the resident rows (``split`` train/val).

Memory: one chunk being converted (``chunk_rows`` rows of the needed columns), the pool's features
(``pool_chunks * chunk_rows * n_features * 4`` bytes), the resident samples and the noise-model
histograms (16 MB per band) -- independent of the catalog size.
"""
from __future__ import annotations

from collections import OrderedDict
from dataclasses import asdict, dataclass

import numpy as np
import torch

from engine.errors import PopsedError

from .config import TrainConfig
from .error_floor import apply_error_floor
from .noise import NoiseAccumulator, NoiseModel
from .observed import Observed, usable_rows
from .selection import Cut
from .trainer import Trainer

__all__ = ["StreamOptions", "StreamingTrainer", "prepare_streamed", "usable_rows", "row_hash"]


@dataclass
class StreamOptions:
    """How a streamed catalog is used (stored in ``config.json`` under ``stream``)."""

    chunk_rows: int = 131_072
    pool_chunks: int = 8
    val_cap: int = 50_000
    train_cap: int = 50_000

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict | None) -> "StreamOptions":
        d = d or {}
        return cls(**{k: v for k, v in d.items() if k in cls.__dataclass_fields__})


_M64 = np.uint64(0xFFFFFFFFFFFFFFFF)


def row_hash(rows: np.ndarray, seed: int, stream: int) -> np.ndarray:
    """Uniform [0, 1) numbers, a pure function of (row number, seed, stream) (splitmix64)."""
    with np.errstate(over="ignore"):
        off = np.uint64((int(seed) * 0x9E3779B97F4A7C15 + int(stream) * 0xD1B54A32D192ED03
                         + 0x632BE59BD9B4E019) % (1 << 64))
        x = np.asarray(rows, dtype=np.int64).astype(np.uint64) + off
        x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        x = x ^ (x >> np.uint64(31))
    return (x >> np.uint64(11)).astype(np.float64) * (1.0 / (1 << 53))


class _BottomK:
    """The ``cap`` rows with the smallest keys seen so far (a uniform sample without replacement)."""

    def __init__(self, cap: int):
        self.cap = int(cap)
        self.parts: list[tuple] = []
        self.size = 0

    def add(self, keys, flux, err, z) -> None:
        if keys.size == 0 or self.cap <= 0:
            return
        self.parts.append((keys, flux, err, z))
        self.size += keys.size
        if self.size > 2 * self.cap:
            self._prune()

    def _prune(self) -> None:
        keys = np.concatenate([p[0] for p in self.parts])
        keep = np.argsort(keys, kind="stable")[: self.cap]
        keep.sort()
        cat = [np.concatenate([p[i] for p in self.parts]) if self.parts[0][i] is not None else None
               for i in range(4)]
        self.parts = [tuple(None if a is None else a[keep] for a in cat)]
        self.size = keep.size

    def arrays(self):
        if not self.parts:
            return None
        self._prune()
        keys, f, e, z = self.parts[0]
        order = np.argsort(keys, kind="stable")
        return f[order], e[order], None if z is None else z[order]


def prepare_streamed(stream, bands, cuts: list[Cut], cfg: TrainConfig, opts: StreamOptions,
                     z_range: tuple[float, float] | None = None,
                     floors: np.ndarray | None = None) -> tuple[Observed, NoiseModel]:
    """Validate the streamed catalog, fit the noise model (two passes; the flux errors with the error
    ``floors``, mag per band, :mod:`.error_floor`) and draw the resident rows.

    Returns the resident :class:`~engine.population.observed.Observed` (``split`` train/val, its ``report``
    counting the *whole* catalog) and the :class:`~engine.population.noise.NoiseModel`.
    """
    bands = tuple(bands)
    noise = NoiseAccumulator(bands)
    tr, va = _BottomK(opts.train_cap), _BottomK(opts.val_cap)
    tot = {"n_rows": 0, "n_incomplete": 0, "n_used": 0, "n_train": 0, "n_val": 0}
    if cfg.redshift == "observed":
        tot["n_no_or_bad_zspec"] = 0
    if cuts:
        tot["n_fail_selection"] = 0

    def consume(chunk) -> None:
        noise.add(chunk.flux, chunk.flux_err if floors is None
                  else apply_error_floor(chunk.flux, chunk.flux_err, floors))
        use, counts = usable_rows(chunk.flux, chunk.z_spec, bands, cuts, cfg.redshift, z_range)
        for k, v in counts.items():
            tot[k] += v
        is_val = row_hash(chunk.row_index, cfg.seed, 7) < cfg.val_fraction
        for sel, buf, name, s in ((use & ~is_val, tr, "n_train", 3), (use & is_val, va, "n_val", 2)):
            idx = np.flatnonzero(sel)
            tot[name] += int(idx.size)
            buf.add(row_hash(chunk.row_index[idx], cfg.seed, s), chunk.flux[idx], chunk.flux_err[idx],
                    None if chunk.z_spec is None else chunk.z_spec[idx])

    stream.scan([consume])
    tot["n_rows"] = int(stream.n_usable)  # as in memory: rows with at least one measured band
    tot["n_file_rows"] = int(stream.n_file_rows)
    tot["n_used"] = tot["n_train"] + tot["n_val"]
    if tot["n_train"] < 20 or tot["n_val"] < 5:
        raise PopsedError(
            f"{stream.label}: only {tot['n_used']} catalog rows are usable (complete in all bands"
            f"{', with spec-z' if cfg.redshift == 'observed' else ''}"
            f"{', passing the selection' if cuts else ''}); need at least 25")
    noise.next_pass()
    for chunk in stream.iter_chunks():
        noise.add(chunk.flux, chunk.flux_err if floors is None
                  else apply_error_floor(chunk.flux, chunk.flux_err, floors))
    nm = noise.result()
    ft, et, zt = tr.arrays()
    fv, ev, zv = va.arrays()
    flux = np.concatenate([ft, fv])
    err = np.concatenate([et, ev])
    z = None if zt is None else np.concatenate([zt, zv])
    split = np.array(["train"] * len(ft) + ["val"] * len(fv))
    report = dict(tot)
    report.update({"streamed": True, "n_train_resident": int(len(ft)), "n_val_resident": int(len(fv)),
                   "n_chunks": int(stream.n_chunks)})
    return Observed(bands, flux, err, z, split, report), nm


class StreamingTrainer(Trainer):
    """A :class:`~engine.population.trainer.Trainer` whose observed training batches come from the file.

    ``observed`` holds the resident rows (from :func:`prepare_streamed`); ``stream`` is the open
    :class:`~engine.catalog.CatalogStream` (chunked as when the resident rows were drawn).
    """

    def __init__(self, model, observed: Observed, noise: NoiseModel, cuts: list[Cut], cfg: TrainConfig,
                 device, stream, options: StreamOptions, z_range: tuple[float, float] | None = None):
        super().__init__(model, observed, noise, cuts, cfg, device)
        self.stream = stream
        self.options = options
        self.z_range = z_range
        self._cache: OrderedDict[int, torch.Tensor] = OrderedDict()
        self._ms = None
        self.chunks_read = 0

    def step(self, ms):
        self._ms = ms
        try:
            return super().step(ms)
        finally:
            self._ms = None

    def pool(self, seed: int, step: int) -> list[int]:
        """Chunk numbers in the pool of step ``step`` of the member with seed ``seed``."""
        p = max(1, int(self.options.pool_chunks))
        js = np.arange(step - p + 1, step + 1, dtype=np.int64) + (1 << 40)
        picks = np.floor(row_hash(js, seed, 11) * self.stream.n_chunks).astype(np.int64)
        return list(dict.fromkeys(int(c) for c in picks))

    def chunk_features(self, c: int) -> torch.Tensor:
        """Standardised features of the usable *training* rows of chunk ``c`` (cached, LRU)."""
        if c in self._cache:
            self._cache.move_to_end(c)
            return self._cache[c]
        ch = self.stream.read_chunk(c)
        self.chunks_read += 1
        use, _ = usable_rows(ch.flux, ch.z_spec, self.bands, self.cuts, self.cfg.redshift, self.z_range)
        use &= ~(row_hash(ch.row_index, self.cfg.seed, 7) < self.cfg.val_fraction)
        z = ch.z_spec[use] if self.use_z else None
        x = torch.tensor(self.feat.numpy(ch.flux[use], z), dtype=torch.float32, device=self.device)
        self._cache[c] = x
        while len(self._cache) > int(self.options.pool_chunks) + 1:
            self._cache.popitem(last=False)
        return x

    def _obs_batch(self, gen: torch.Generator) -> torch.Tensor:
        ms = self._ms
        if ms is None:
            return super()._obs_batch(gen)
        parts = [x for x in (self.chunk_features(c) for c in self.pool(ms.seed, ms.step)) if x.shape[0]]
        if not parts:
            return super()._obs_batch(gen)
        x = torch.cat(parts) if len(parts) > 1 else parts[0]
        cap = int(self.cfg.obs_cap)
        if x.shape[0] <= cap:
            return x
        idx = torch.randint(0, x.shape[0], (cap,), generator=gen, device=x.device)
        return x[idx]

