"""``python -m bench``: corpus of signed votes, open-loop load, peers, reports.

    python -m bench corpus --voters N --election E [--out FILE]
    python -m bench gateway [--quick] [--max | --rate R] [--targets gateway,nginx-204,...]
    python -m bench fastpath ...

See ``bench/README.md`` for the method and the measured figures.
"""
