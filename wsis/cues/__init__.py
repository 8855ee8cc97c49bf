"""Localisation cues: peak response maps, saliency and related per-pixel evidence.

PRM: :mod:`wsis.cues.prm` (classifier, peak stimulation, peak finding), :mod:`wsis.cues.peak_backprop`
(peak response maps), :mod:`wsis.cues.cam` (class activation maps). Import from those modules: this
package stays free of torch so that cues without it import quickly.
"""
