"""The harness (after AlgoPerf): the method contract (``method``, ``spec``), one run lifecycle (``run``), one
training loop (``loop``), typed run inputs and their content identities (``identity``), devices, seeds and
collectives (``dist``), and the two training entry points (``train``, ``reward_run``)."""
