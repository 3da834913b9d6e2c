"""`hfkernels train` (placeholder until its issue lands)."""


def register(sub):
    p = sub.add_parser("train", help="(not implemented yet)")
    p.set_defaults(func=lambda args: print("hfkernels train: not implemented yet") or 1)
