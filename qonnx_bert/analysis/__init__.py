"""Analysis over finished models: per-role SQNR, outliers, leave-one-out, GLUE evaluation,
emulated HTP accuracy, the per-channel PEG reference."""
