"""Video data: decoding (PyAV, imported on first use), frame sampling, clip transforms, the
video-list data set and the generated motion-direction data set."""
