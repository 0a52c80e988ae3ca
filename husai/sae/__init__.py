"""SAEs, pure compute: construction from sae-lens training classes (`build`), the consistency
penalty (`consistency`), seeded training seed by seed (`train`) or all seeds at once
(`batched`, with its kernels in `batched_sparse`), and what training returns (`types`)."""
