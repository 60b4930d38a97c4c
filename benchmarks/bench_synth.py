"""How fast the synthetic world renders and the data stage runs (numbers printed, not asserted).

    PYTHONPATH=$PWD python benchmarks/bench_synth.py [--scenes 200] [--n 1000]

Prints the render speed as a real-time factor (seconds of audio per second of wall time)
and the wall time of `synthesize` for --n items, with its share spent outside rendering.
"""

from __future__ import annotations

import argparse
import tempfile
import time

from echo_lite.data.synth import synthesize
from echo_lite.data.world import render_scene, sample_scene


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--scenes", type=int, default=200)
    p.add_argument("--n", type=int, default=1000)
    args = p.parse_args()

    t0 = time.perf_counter()
    scenes = [sample_scene(s) for s in range(args.scenes)]
    t_sample = time.perf_counter() - t0
    t0 = time.perf_counter()
    audio_s = sum(len(render_scene(s)) / 16_000 for s in scenes)
    t_render = time.perf_counter() - t0
    print(f"sample {args.scenes} scenes: {t_sample:.2f} s; render: {t_render:.2f} s for {audio_s:.0f} s of audio "
          f"-> {audio_s / t_render:.0f}x real time, {1000 * t_render / args.scenes:.1f} ms per clip")

    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        stats = synthesize(tmp, "tiny", n=args.n, seed=0, progress=False)
        t_synth = time.perf_counter() - t0
    n_scenes = sum(stats["scenes"].values())
    est_render = n_scenes * t_render / args.scenes
    print(f"synthesize --n {args.n}: {t_synth:.1f} s for {n_scenes} clips and {sum(stats['items'][s] for s in ('sft', 'rl', 'eval'))} "
          f"items; rendering ~{est_render:.1f} s of it ({est_render / t_synth:.0%}), the rest teacher, filters, WAV and HF writes")


if __name__ == "__main__":
    main()
