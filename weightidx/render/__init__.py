"""A compare report as text for the terminal and as a self-contained HTML page."""
