"""The lean runtime: numpy plus one inference backend. Never imports torch."""
