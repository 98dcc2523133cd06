"""The MovieLens data sets: one reader of their files (`files`, `ratings`) for the
importer (`importer`, with its rows and per-dialect writers) and offline evaluation."""
