"""The realtime voice model's side of a call: its instructions, its tools and agent consults."""
