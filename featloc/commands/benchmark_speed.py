"""Placeholder until implemented."""


def add_parser(sub, formatter):
    p = sub.add_parser("speed", help="(not implemented yet)", formatter_class=formatter)
    p.set_defaults(func=lambda args: 1)
