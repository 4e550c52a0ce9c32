"""Data quality: the gate between the dataset build and training.

``stage.run_data_quality`` is the stage's entry; the other modules are its
parts: ``tables`` (frames from the artifacts), ``expectations`` (Great
Expectations), ``stats``, ``anomalies``, ``drift``, ``bias`` and ``report``.
"""
