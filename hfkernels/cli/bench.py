"""`hfkernels bench` (placeholder until its issue lands)."""


def register(sub):
    p = sub.add_parser("bench", help="(not implemented yet)")
    p.set_defaults(func=lambda args: print("hfkernels bench: not implemented yet") or 1)
