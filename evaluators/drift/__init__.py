"""Drift: what flows through the guard, compared over time.

``embedding`` reduces MiniLM embeddings; ``sketch`` pre-aggregates events per
hour; ``recorder`` buffers them off the request thread; ``stats`` holds the
statistics (PSI, KS, Jensen-Shannon with chi-square, MMD); ``report`` compares
a window with a baseline signal by signal and ``render`` draws it;
``profile`` scores single results against a baseline; ``runtime`` ties
recording and scoring together for the API and the workers. ``config`` is the
policy's ``drift:`` block. Persistence is ``store.drift``.
"""
