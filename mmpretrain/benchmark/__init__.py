"""`mmpretrain benchmark`: zero-shot benchmark suites over many models, streamed, resumable, in CLIP_benchmark's
result schema (docs/BENCHMARKING.md)."""
