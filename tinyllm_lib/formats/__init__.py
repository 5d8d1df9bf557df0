"""Other tools' on-disk formats, one module per format.

Each module turns TinyLLM objects into the files another tool reads and back, and owns
that tool's names, defaults and checks, so that the rest of the library never needs to
know them: ``hf_llama`` (a Hugging Face Llama folder, ``config.json`` +
``model.safetensors``), ``peft_adapter`` (a PEFT LoRA adapter, with its
``save_adapter`` / ``load_adapter``), ``hf_tokenizer`` (a Hugging Face ``tokenizer.json``
or a GGUF file's tokenizer metadata, behind ``Tokenizer.from_hf`` / ``from_gguf`` /
``save_hf``), ``gguf`` (llama.cpp's single file: ``read_gguf_model``, ``gguf_metadata``)
and ``bnb_4bit`` (bitsandbytes' 4-bit weights in a Llama folder, as transformers saves a
model loaded in 4 bits: ``bnb_4bit_files``, ``read_bnb_4bit_model``).
``checkpoint.save_pretrained`` / ``load_pretrained`` pick the format a whole model is saved
in or read from, and call these modules. Later formats join here the same way.
"""
