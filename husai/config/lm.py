"""The language-model activation source: which model, which corpus, how many tokens.

Set `activations.source: transformer_lens` and fill `activations.lm`:

    activations:
      source: transformer_lens
      hook: blocks.0.hook_resid_post
      eval_frac: 0.1
      lm: {model: pythia-70m, corpus: data/wiki.jsonl, context_size: 128, token_budget: 200000}

The rows are the activations at `activations.hook` of every token position of the corpus's
documents (BOS and padding positions left out by default), up to `token_budget` positions; a
document is held out whole (`activations.eval_frac`, `activations.split_seed`), never split
between the SAE-train and held-out sides. `husai.model.lm_source` does the work.
"""

from __future__ import annotations

from pydantic import Field, field_validator

from husai.config.strict import Strict


class LanguageModelSource(Strict):
    """A TransformerLens model run over a local corpus (nothing is downloaded)."""

    model: str = Field(
        description="a TransformerLens model name loaded from the local Hugging Face cache "
        "(offline), or a folder written by `husai.model.lm_model.save_lm_folder` "
        "(config.json, model.safetensors and the tokenizer's files)"
    )
    corpus: str = Field(
        description="local text: a .txt file (one document per non-empty line), a .jsonl file "
        "(one JSON object per line, the text under `text_field`) or a folder written by "
        "`datasets.Dataset.save_to_disk`"
    )
    text_field: str = Field("text", min_length=1, description="the text column of .jsonl/datasets")
    context_size: int = Field(128, ge=2, description="tokens per sequence fed to the model")
    token_budget: int = Field(
        200_000, ge=2, description="token positions extracted in all (SAE-train + held out)"
    )
    ood_corpus: str | None = Field(
        None,
        description="a second local corpus (same formats) for the OOD stress: its rows (half "
        "as many as the held-out rows) are never trained on",
    )
    exclude_bos: bool = Field(
        True, description="leave out BOS and padding positions (their activations are outliers)"
    )
    batch_size: int = Field(
        16, ge=1, description="sequences per forward pass (speed and memory only, not the rows)"
    )
    chunk_rows: int = Field(
        65_536,
        ge=1,
        description="rows held in memory before they are written to disk (memory only)",
    )

    @field_validator("model", "corpus", "ood_corpus")
    @classmethod
    def _not_blank(cls, v: str | None) -> str | None:
        if v is not None and not v.strip():
            raise ValueError("must not be empty")
        return v

    def identity(self) -> dict[str, object]:
        """What changes the rows: everything but the batching and chunking."""
        return self.model_dump(mode="json", exclude={"batch_size", "chunk_rows"})
