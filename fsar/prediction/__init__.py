"""Using a trained run on new videos: a support set of named classes, class scores for queries with a "none of
these" answer, and pictures of why a query matched (``fsar predict``, ``fsar serve``)."""
