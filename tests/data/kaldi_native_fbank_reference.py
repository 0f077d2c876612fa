"""Writes kaldi_native_fbank_reference.npy: kaldi-native-fbank's (an independent C++ port of Kaldi) log-mel features
of tests/test_imagebind.py's reference wave with ImageBind's settings, to check ``brokenbind.backbones.fbank``.

Run in a separate environment: ``pip install numpy kaldi-native-fbank==1.22.4; python kaldi_native_fbank_reference.py``
(brokenbind does not depend on it).
"""

import math
from pathlib import Path

import kaldi_native_fbank as knf
import numpy as np

SAMPLE_RATE, SAMPLES = 16000, 8000
t = np.arange(SAMPLES, dtype=np.float64) / SAMPLE_RATE
# the same formula as tests/test_imagebind.py's reference_wave: a tone, a chirp and a square wave
wave = (
    0.3 * np.sin(2 * math.pi * 440 * t)
    + 0.1 * np.sin(2 * math.pi * (200 + 3000 * t) * t)
    + 0.05 * np.sign(np.sin(2 * math.pi * 97 * t))
).astype(np.float32)
options = knf.FbankOptions()
options.frame_opts.samp_freq = SAMPLE_RATE
options.frame_opts.dither = 0.0
options.frame_opts.window_type = "hanning"
options.frame_opts.frame_length_ms = 25
options.frame_opts.frame_shift_ms = 10
options.frame_opts.snip_edges = True
options.mel_opts.num_bins = 128
options.use_energy = False
options.htk_compat = True
fbank = knf.OnlineFbank(options)
fbank.accept_waveform(SAMPLE_RATE, wave.tolist())
fbank.input_finished()
features = np.stack([np.array(fbank.get_frame(i)) for i in range(fbank.num_frames_ready)]).astype(np.float32)
np.save(Path(__file__).with_suffix(".npy"), features)
