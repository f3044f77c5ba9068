"""A regional node: keeps a province's or city's credit records and answers authorized queries."""
