"""The provincial feed: settings, signing, the durable sender, file drops and the reference receiver."""
