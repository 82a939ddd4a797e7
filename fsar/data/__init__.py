"""Video data: decoding, frame sampling, manifests, episodes, synthetic videos."""
