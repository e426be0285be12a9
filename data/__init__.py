"""The data layer: the user's files -> HF Datasets -> T-frame windows -> mixture sampling.

Modules (see docs/data.md): `schema` (action space, reward spec, `load_prepared`), `importers`,
`prepare` (`python -m data.prepare`), `windows` (`WindowDataset`, `collate_windows`), `sampler`
(`MixtureSampler`), `synthetic` (`python -m data.synthetic`). Nothing is imported here so that the
command-line entry points start fast.
"""
