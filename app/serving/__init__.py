"""Serving: the active model, the per-user read, the popular fallback, filters, batching
and the answer cache, composed by `app.serving.recommender.Recommender`."""
