"""Data curation steps as pure functions over batches of documents, with reason codes.

A document is a dict with ``id`` and ``text`` (other keys are kept). Every step takes a frozen
config, maps a batch to the kept documents and records one :class:`Decision` (step, rule,
measured value, threshold) per drop or change. :class:`Pipeline` runs a recipe over streamed
batches and reports per-step statistics and examples; :func:`preview` shows a threshold's cut.
See ``docs/data-curation.md``.
"""

from training.core.curate.balance import Balance, BalanceConfig, balance, copies, sampling_factors
from training.core.curate.base import DROP, MODIFY, CurationError, Decision, Doc, FilterStep, Step, StepConfig, StepResult, batched
from training.core.curate.datasheet import datasheet_markdown
from training.core.curate.decontam import DecontamConfig, Decontaminate, NGramIndex, eval_texts_from_records
from training.core.curate.dedup import (ExactDedup, ExactDedupConfig, LSHIndex, MinHashConfig, NearDedup, SortedRuns,
                                        band_keys,
                                        content_hash, estimated_jaccard, false_negative_area, false_positive_area,
                                        jaccard, lsh_probability, lsh_threshold, minhash_signatures, near_duplicates,
                                        optimal_params, s_curve, spot_check)
from training.core.curate.extract import (ExtractConfig, ExtractHTML, Normalize, NormalizeConfig, html_to_text,
                                          normalize_text)
from training.core.curate.filters import (LanguageConfig, LanguageFilter, ToxicityConfig, ToxicityFilter,
                                          detect_language, profanity_scores)
from training.core.curate.pii import PIIConfig, RedactPII, find_pii, iban_valid, luhn_valid, redact_pii
from training.core.curate.pipeline import STEP_TYPES, Pipeline, StepStats, build_step, default_recipe, preview
from training.core.curate.quality import (C4Config, C4Filter, FineWebConfig, FineWebQuality, GopherQuality,
                                          GopherQualityConfig, GopherRepetition, GopherRepetitionConfig,
                                          c4_filter_text, fineweb_stats, gopher_quality_stats,
                                          gopher_repetition_stats, presets_table)
from training.core.curate.runner import iter_decisions, iter_version_documents, run_recipe, sample_documents
from training.core.curate.segment import LengthConfig, LengthFilter, Segment, SegmentConfig, chunk_text
from training.core.curate.sources import (ImportReport, SourceError, SourceLimits, import_corpus, import_file,
                                          import_folder, import_url)

__all__ = [
    "Balance", "BalanceConfig", "C4Config", "C4Filter", "DROP", "DecontamConfig", "Decontaminate", "Decision", "Doc",
    "ExactDedup", "ExactDedupConfig", "ExtractConfig", "ExtractHTML", "FilterStep", "FineWebConfig", "FineWebQuality",
    "GopherQuality", "GopherQualityConfig", "GopherRepetition", "GopherRepetitionConfig", "LSHIndex",
    "LanguageConfig", "LanguageFilter", "LengthConfig", "LengthFilter", "MODIFY", "MinHashConfig", "NGramIndex",
    "NearDedup", "Normalize", "NormalizeConfig", "PIIConfig", "Pipeline", "RedactPII", "STEP_TYPES", "Segment",
    "SegmentConfig", "Step", "StepConfig", "StepResult", "StepStats", "ToxicityConfig", "ToxicityFilter", "balance",
    "band_keys", "batched", "build_step", "c4_filter_text", "chunk_text", "content_hash", "copies", "default_recipe",
    "detect_language", "estimated_jaccard", "false_negative_area", "false_positive_area", "find_pii",
    "fineweb_stats", "gopher_quality_stats", "gopher_repetition_stats", "html_to_text", "iban_valid", "jaccard",
    "lsh_probability", "lsh_threshold", "luhn_valid", "minhash_signatures", "near_duplicates", "normalize_text",
    "optimal_params", "presets_table", "preview", "profanity_scores", "redact_pii", "s_curve", "sampling_factors",
    "spot_check", "eval_texts_from_records", "SortedRuns", "CurationError", "ImportReport", "SourceError",
    "SourceLimits", "import_corpus", "import_file", "import_folder", "import_url", "iter_decisions",
    "iter_version_documents", "run_recipe", "datasheet_markdown", "sample_documents",
]
