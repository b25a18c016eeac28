"""``ovss demo``: a web page over the Python API (gradio), for people who do not write code.

    ovss demo                      # http://127.0.0.1:7860
    ovss demo --port 8080 --model ViT-B-16 --pretrained /path/to/open_clip_vit_b16.safetensors
    ovss demo --host 0.0.0.0       # listen on every interface (anyone on the network can use it)

The page lives in :mod:`ovss.demo.app` (imported only when the command runs, since gradio takes
seconds to import); the command is in :mod:`ovss.cli`.
"""
