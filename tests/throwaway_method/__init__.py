"""A method registered only by the tests (``registry.extended``): supervised fine-tuning on the preferred image of
each pair. It exists to prove that adding a method takes one folder and one registry entry, no core edit."""

from lpo_bench.harness.spec import MethodSpec

SPEC = MethodSpec(
    name="winner-sft",
    method="throwaway_method.method:WinnerSFT",
    config="throwaway_method.method:WinnerSFTConfig",
    role="baseline",
    summary="LoRA fine-tuning with the denoising loss on each pair's preferred image",
    inputs=frozenset({"pairs"}),
    quick={"max_updates": 2, "pairs_per_update": 4, "max_pairs": 16},
    bench={"max_updates": 10**9, "pairs_per_update": 4, "max_pairs": 16},
    bench_components="throwaway_method.method:sampling_step_components",
)
