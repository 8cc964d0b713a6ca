"""What goes in: named datasets (GSM8K, MATH-500, MAWPS, JSONL, the hub), the generated recall task,
the rows they all become, answer extraction, and chat prompts. A bottom layer beside models/."""
