"""driftax.flows vs flowjax, side by side in ONE process, on the same architectures.

RQ-spline coupling flow and masked autoregressive flow (spline transformer): 8 layers,
conditioner width 50 (one hidden layer), 8 interior knots on [-4, 4]. For each library:

- training-step time (maximum likelihood, Adam, batch 256): driftax's compiled fit loop vs
  flowjax's jitted `step` as `fit_to_data` calls it;
- jitted throughput of `sample` and of the log density (points per second);
- compile time (first jitted log-density call minus a warm call; first fit minus second fit);
- the wall time of a second fit of the same flow with the same optimiser (does it recompile?).

Also reports the quality of reverse-KL fits to Rezende–Mohamed U1 (KL, importance ESS).

Usage: `python benchmarks/flows.py --quick` (a few minutes on a 2-core CPU) writes
`out/flows.json` and `out/flows.md`.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time

import equinox as eqx
import jax
import jax.numpy as jnp
import optax

import driftax as dx
import driftax.flows as fl


def _timeit(fn, repeats: int) -> float:
    """Best wall time of `repeats` calls (after the caller has warmed `fn` up)."""
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        jax.block_until_ready(fn())
        best = min(best, time.perf_counter() - t)
    return best


def _first_call(fn) -> float:
    t = time.perf_counter()
    jax.block_until_ready(fn())
    return time.perf_counter() - t


# ---------------------------------------------------------------------------------------------
# the two libraries behind one small interface


def _driftax_flow(arch, key, dim):
    if arch == "coupling":
        return fl.coupling_flow(key, dim, "spline", num_layers=8, hidden=50, knots=8, interval=4.0)
    return fl.masked_autoregressive_flow(
        key, dim, "spline", num_layers=8, hidden=50, knots=8, interval=4.0
    )


def _flowjax_flow(arch, key, dim):
    from flowjax.bijections import RationalQuadraticSpline
    from flowjax.distributions import Normal
    from flowjax.flows import coupling_flow, masked_autoregressive_flow

    make = coupling_flow if arch == "coupling" else masked_autoregressive_flow
    return make(
        key,
        base_dist=Normal(jnp.zeros(dim)),
        transformer=RationalQuadraticSpline(knots=8, interval=4),
        flow_layers=8,
        nn_width=50,
        nn_depth=1,
    )


class _Lib:
    """One library's callables for one architecture; measurements fill `out`."""

    def __init__(self, name):
        self.name = name
        self.out = {}


def _setup_driftax(arch, dim, data, points, n_steps, batch):
    lib = _Lib("driftax")
    flow = _driftax_flow(arch, jax.random.key(0), dim)
    opt = optax.adam(1e-3)

    def fit(f, k):
        return fl.fit_max_likelihood(
            f, data, key=jax.random.key(k), optimizer=opt, num_steps=n_steps, batch_size=batch
        )

    t1 = _first_call(lambda: fit(flow, 1)[1]["train"])
    trained, _ = fit(flow, 2)
    t2 = _first_call(lambda: fit(trained, 3)[1]["train"])
    lib.out.update(fit_first_s=t1, fit_second_s=t2, fit_compile_s=t1 - t2)
    # `n_steps` training steps: one call of the compiled fit loop (no per-step dispatch)
    lib.train_block = lambda: fit(trained, 4)[1]["train"]
    log_density = eqx.filter_jit(lambda f, x: jax.vmap(f.log_density)(x))
    sample = eqx.filter_jit(lambda f, k: f.sample(k, (points.shape[0],)))
    lib.log_density = lambda: log_density(trained, points)
    lib.sample = lambda: sample(trained, jax.random.key(6))
    lib.nll = lambda x: float(-jnp.mean(log_density(trained, x)))
    return lib


def _setup_flowjax(arch, dim, data, points, n_epochs, n_steps, batch):
    import paramax
    from flowjax.train import fit_to_data
    from flowjax.train.losses import MaximumLikelihoodLoss
    from flowjax.train.train_utils import step

    lib = _Lib("flowjax")
    flow = _flowjax_flow(arch, jax.random.key(0), dim)
    opt = optax.adam(1e-3)

    def fit(f, k):
        return fit_to_data(
            jax.random.key(k),
            f,
            data,
            optimizer=opt,
            max_epochs=n_epochs,
            max_patience=10**6,
            batch_size=batch,
            show_progress=False,
        )

    t1 = _first_call(lambda: fit(flow, 1)[0])
    trained, _ = fit(flow, 2)
    t2 = _first_call(lambda: fit(trained, 3)[0])
    lib.out.update(fit_first_s=t1, fit_second_s=t2, fit_compile_s=t1 - t2)

    # `n_steps` training steps as fit_to_data's loop runs them: its jitted `step` per batch
    params, static = eqx.partition(
        trained, eqx.is_inexact_array, is_leaf=lambda leaf: isinstance(leaf, paramax.NonTrainable)
    )
    loss_fn = MaximumLikelihoodLoss()
    batches = [data[i * batch : (i + 1) * batch] for i in range(data.shape[0] // batch)]

    def train_block():
        p, s = params, opt.init(params)
        losses = []
        for i in range(n_steps):
            p, s, loss = step(
                p,
                static,
                batches[i % len(batches)],
                optimizer=opt,
                opt_state=s,
                loss_fn=loss_fn,
                key=jax.random.key(i),
            )
            losses.append(loss)
        return losses

    jax.block_until_ready(train_block())
    lib.train_block = train_block
    log_density = eqx.filter_jit(lambda f, x: f.log_prob(x))
    sample = eqx.filter_jit(lambda f, k: f.sample(k, (points.shape[0],)))
    lib.log_density = lambda: log_density(trained, points)
    lib.sample = lambda: sample(trained, jax.random.key(6))
    lib.nll = lambda x: float(-jnp.mean(log_density(trained, x)))
    return lib


def _measure(libs, points, n_steps, repeats, data):
    """Compile times from first calls, then `repeats` rounds that alternate between the
    libraries (so both see the same background load); the best time of each is kept."""
    for lib in libs:
        for name in ("log_density", "sample"):
            fn = getattr(lib, name)
            first = _first_call(fn)
            lib.out[f"{name}_compile_s"] = first - _timeit(fn, 1)
    best = {(lib.name, m): float("inf") for lib in libs for m in ("train", "ld", "sample")}
    for _ in range(repeats):
        for lib in libs:
            best[lib.name, "ld"] = min(best[lib.name, "ld"], _timeit(lib.log_density, 1))
            best[lib.name, "sample"] = min(best[lib.name, "sample"], _timeit(lib.sample, 1))
            best[lib.name, "train"] = min(best[lib.name, "train"], _timeit(lib.train_block, 1))
    n = points.shape[0]
    for lib in libs:
        lib.out["train_step_ms"] = 1e3 * best[lib.name, "train"] / n_steps
        lib.out["log_density_per_s"] = n / best[lib.name, "ld"]
        lib.out["sample_per_s"] = n / best[lib.name, "sample"]
        lib.out["final_train_loss"] = lib.nll(data[: min(4096, data.shape[0])])


# ---------------------------------------------------------------------------------------------
# quality: reverse-KL fits to U1


def _u1_fits(quick: bool):
    u1 = dx.energies.rezende("u1", half_width=8.0)
    log_z = float(u1.log_normalizer)
    rows = {}
    configs = {
        "planar_32": (
            fl.planar_flow(jax.random.key(1), 2, 32, init_scale=0.5),
            optax.adam(optax.cosine_decay_schedule(2e-3, 12_000, 0.05)),
            dict(num_steps=12_000, annealing_steps=8000),
        ),
        "spline_coupling_4": (
            fl.coupling_flow(jax.random.key(0), 2, "spline", num_layers=4, hidden=32, interval=5.0),
            optax.adam(optax.cosine_decay_schedule(3e-3, 3000, 0.05)),
            dict(num_steps=3000),
        ),
    }
    for name, (flow, opt, kw) in configs.items():
        t = time.perf_counter()
        flow, losses = fl.fit_reverse_kl(
            flow, u1, key=jax.random.key(1), optimizer=opt, batch_size=256, **kw
        )
        jax.block_until_ready(losses["train"])
        wall = time.perf_counter() - t
        d = fl.importance_diagnostics(
            flow, u1, key=jax.random.key(123), num_samples=20_000, log_normalizer=log_z
        )
        rows[name] = {
            "kl_nats": d["reverse_kl"],
            "ess_fraction": d["ess_fraction"],
            "log_z_error": d["log_normalizer"] - log_z,
            "fit_s": wall,
            "steps": kw["num_steps"],
        }
    return rows


# ---------------------------------------------------------------------------------------------


def _markdown(record) -> str:
    lines = ["# driftax.flows vs flowjax", ""]
    lines.append(
        f"{record['env']['platform']}, JAX {record['env']['jax']}, flowjax {record['env']['flowjax']}, "
        f"{record['env']['cpu_count']} CPUs. dim = {record['config']['dim']}, batch "
        f"{record['config']['batch']}, fit = {record['config']['fit_steps']} steps; throughput on "
        f"{record['config']['points']} points (best of {record['config']['repeats']})."
    )
    lines.append("")
    lines.append("| architecture | metric | driftax | flowjax | ratio (driftax advantage) |")
    lines.append("|---|---|---|---|---|")
    metrics = [
        ("train_step_ms", "training step (ms)", "lower"),
        ("log_density_per_s", "log densities / s", "higher"),
        ("sample_per_s", "samples / s", "higher"),
        ("log_density_compile_s", "log-density compile (s)", "lower"),
        ("fit_first_s", "first fit, incl. compile (s)", "lower"),
        ("fit_second_s", "second fit, same flow (s)", "lower"),
        ("final_train_loss", "train NLL after fit", None),
    ]
    for arch, res in record["results"].items():
        for key, label, better in metrics:
            a, b = res["driftax"][key], res["flowjax"][key]
            if better == "lower":
                ratio = f"{b / a:.2f}×" if a > 0 else "—"
            elif better == "higher":
                ratio = f"{a / b:.2f}×" if b > 0 else "—"
            else:
                ratio = ""
            fmt = (lambda v: f"{v:,.0f}") if key.endswith("per_s") else (lambda v: f"{v:.3g}")
            lines.append(f"| {arch} | {label} | {fmt(a)} | {fmt(b)} | {ratio} |")
    lines.append("")
    lines.append(
        "Training step: driftax's compiled fit loop (fit time / steps); flowjax's jitted `step` "
        "called in a Python loop as `fit_to_data` does (dispatch included, no validation). "
        "Timings alternate between the libraries and keep the best of the rounds. "
        "Ratios are flowjax/driftax for times and driftax/flowjax for throughputs (> 1: driftax "
        "is faster). Both fits run the same number of steps; flowjax's `fit_to_data` recompiles "
        "on every call, while a second driftax fit reuses the compiled loop (checked by `tests/flows/test_train.py` with "
        "`eqx.debug.assert_max_traces`)."
    )
    if record.get("u1"):
        lines += ["", "## Reverse-KL fits to Rezende–Mohamed U1", ""]
        lines.append("| flow | steps | KL(q‖p) (nats) | importance ESS | log Z error | fit (s) |")
        lines.append("|---|---|---|---|---|---|")
        for name, r in record["u1"].items():
            lines.append(
                f"| {name} | {r['steps']} | {r['kl_nats']:.4f} | {r['ess_fraction']:.3f} | "
                f"{r['log_z_error']:+.4f} | {r['fit_s']:.1f} |"
            )
    return "\n".join(lines) + "\n"


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="small sizes, minutes on a 2-core CPU")
    parser.add_argument("--dim", type=int, default=4)
    parser.add_argument("--out", default="out")
    parser.add_argument("--skip-u1", action="store_true", help="skip the U1 reverse-KL fits")
    args = parser.parse_args(argv)

    batch = 256
    epochs = 4 if args.quick else 20
    points = 10_000 if args.quick else 100_000
    repeats = 3 if args.quick else 10
    n_data = 10_000 if args.quick else 50_000
    # flowjax holds out 10% for validation and drops the last partial batch of each epoch
    steps_per_epoch = int(n_data * 0.9) // batch
    fit_steps = epochs * steps_per_epoch

    target = dx.energies.four_mode_gmm(args.dim) if args.dim % 2 == 0 else None
    if target is None:
        raise SystemExit("--dim must be even (four_mode_gmm data)")
    data = target.sample(jax.random.key(10), n_data)
    pts = target.sample(jax.random.key(11), points)

    import flowjax

    record = {
        "env": {
            "platform": platform.platform(),
            "jax": jax.__version__,
            "flowjax": getattr(flowjax, "__version__", "?"),
            "cpu_count": os.cpu_count(),
            "devices": [str(d) for d in jax.devices()],
        },
        "config": {
            "dim": args.dim,
            "batch": batch,
            "fit_steps": fit_steps,
            "points": points,
            "repeats": repeats,
            "layers": 8,
            "width": 50,
            "knots": 8,
            "quick": args.quick,
        },
        "results": {},
    }
    for arch in ("coupling", "maf"):
        print(f"[{arch}] compiling and fitting ...", file=sys.stderr, flush=True)
        ours = _setup_driftax(arch, args.dim, data, pts, fit_steps, batch)
        theirs = _setup_flowjax(arch, args.dim, data, pts, epochs, fit_steps, batch)
        print(f"[{arch}] timing ...", file=sys.stderr, flush=True)
        _measure([ours, theirs], pts, fit_steps, repeats, data)
        record["results"][arch] = {"driftax": ours.out, "flowjax": theirs.out}
        print(json.dumps(record["results"][arch], indent=1), file=sys.stderr, flush=True)
    if not args.skip_u1:
        print("[u1] reverse-KL fits ...", file=sys.stderr, flush=True)
        record["u1"] = _u1_fits(args.quick)

    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "flows.json"), "w") as f:
        json.dump(record, f, indent=2)
    md = _markdown(record)
    with open(os.path.join(args.out, "flows.md"), "w") as f:
        f.write(md)
    print(md)


if __name__ == "__main__":
    main()
