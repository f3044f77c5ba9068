"""What the network's data is: the USCC, the data categories and their fields, the purposes.

The bottom layer: pure functions and tables over plain values. It imports nothing else from
xinyi, so every other part may use it.
"""
