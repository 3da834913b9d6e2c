"""`hfkernels eval` (placeholder until its issue lands)."""


def register(sub):
    p = sub.add_parser("eval", help="(not implemented yet)")
    p.set_defaults(func=lambda args: print("hfkernels eval: not implemented yet") or 1)
