"""The local, versioned, content-addressed adapter store and its sync with the Hugging Face Hub."""
