"""The evaluation layer: ranking metrics over full item sets, inductive inference on E_tr + E_new, paired
comparisons and the similar-user study (paper §5.1 protocol, §5.4-5.5). Uses the data and models layers.
"""
