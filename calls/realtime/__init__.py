"""The realtime voice model's side of a call: its instructions, its tools, agent consults and the forced consult."""
