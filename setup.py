"""Build: one extension ``blockzoo._C`` from csrc/ (C++ always; CUDA when torch is a CUDA build and nvcc exists).

``BLOCKZOO_NO_EXT=1`` skips the extension; the sparse ops then run their PyTorch fallback.
``BLOCKZOO_CPU_ARCH`` is the ``-march`` of the C++ CPU kernels: ``native`` (default, the building machine's
CPU: a build is for the machine that made it), a portable level such as ``x86-64-v3``, or ``none``.
"""
import glob
import os
import shutil

from setuptools import setup


def extensions():
    if os.environ.get("BLOCKZOO_NO_EXT", "0") == "1":
        return [], {}
    sources = sorted(glob.glob("csrc/*.cpp") + glob.glob("csrc/cpu/*.cpp"))
    if not sources:
        return [], {}
    import torch
    from torch.utils import cpp_extension

    cuda_sources = sorted(glob.glob("csrc/cuda/*.cu"))
    nvcc = shutil.which("nvcc") or (os.environ.get("CUDA_HOME") and os.path.join(os.environ["CUDA_HOME"], "bin", "nvcc"))
    use_cuda = bool(cuda_sources) and torch.version.cuda is not None and nvcc and os.environ.get("BLOCKZOO_NO_CUDA", "0") != "1"
    cxx = ["-O3", "-fopenmp"]  # the C++ standard is the one torch asks for
    arch = os.environ.get("BLOCKZOO_CPU_ARCH", "native")
    if arch and arch != "none":  # the CPU kernels' SIMD width: 3-4x faster with AVX2/AVX-512 than baseline SSE2
        cxx.append(f"-march={arch}")
    define = []
    if use_cuda:
        if "TORCH_CUDA_ARCH_LIST" not in os.environ and not torch.cuda.is_available():
            os.environ["TORCH_CUDA_ARCH_LIST"] = "9.0"
        ext = cpp_extension.CUDAExtension(
            "blockzoo._C", sources + cuda_sources, define_macros=define + [("BLOCKZOO_WITH_CUDA", None)],
            extra_compile_args={"cxx": cxx, "nvcc": ["-O3", "--use_fast_math", "-lineinfo"]},
            extra_link_args=["-fopenmp"])
    else:
        ext = cpp_extension.CppExtension("blockzoo._C", sources, define_macros=define,
                                         extra_compile_args={"cxx": cxx}, extra_link_args=["-fopenmp"])
    return [ext], {"build_ext": cpp_extension.BuildExtension.with_options(use_ninja=True)}


ext_modules, cmdclass = extensions()
setup(ext_modules=ext_modules, cmdclass=cmdclass)
