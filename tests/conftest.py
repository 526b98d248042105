import os

# Triton kernels run on CPU only in the interpreter, which must be switched on before
# triton (or dvtp_kernels.triton_backend) defines its kernels. On a GPU machine they run
# compiled instead, and on CUDA tensors.
import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")
