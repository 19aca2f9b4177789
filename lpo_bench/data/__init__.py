"""Data: preference pairs (``pairs``), training prompts (``prompts``), pinned evaluation datasets (``datasets``) and
versioned evaluation suites (``suites``)."""
