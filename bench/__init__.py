"""ALICE benchmarks (SPEC section 12): `python -m bench [--quick] [--postgres]`.

`bench.run` orchestrates: it starts the service (`alice serve`), the fake Anthropic server and a
bare Starlette baseline (`bench.bare`), pins the servers to one core and the load to the other,
drives the load from a client process of its own (`bench.client`, or wrk where installed),
prints the table and writes `bench/results.json`.
"""
