"""Writes fuzz/seeds/<target>/: small real inputs for each fuzz target, cut from the
repository's golden fixtures and from ../shared/data (BEIR corpora, queries, qrels).
Also writes a tiny llama GGUF by hand. Run from anywhere: python3 fuzz/make_seeds.py
"""
import json, struct, os, shutil
R=os.path.dirname(os.path.dirname(os.path.abspath(__file__))); S=R+'/fuzz/seeds'; G=R+'/dear-core/tests/golden'
D=os.environ.get('DEAR_DATA', os.path.join(R, '..', 'shared', 'data'))
shutil.rmtree(S, ignore_errors=True)
def put(t, name, data):
    os.makedirs(f'{S}/{t}', exist_ok=True)
    if isinstance(data,str): data=data.encode()
    assert len(data) < 64*1024, (t,name,len(data))
    open(f'{S}/{t}/{name}','wb').write(data)
def cp(t, name, src): put(t, name, open(src,'rb').read())

# --- a tiny llama GGUF (v3), written by hand ---
def gs(s): b=s.encode(); return struct.pack('<Q',len(b))+b
def kv(k,ty,v):
    out=gs(k)+struct.pack('<I',ty)
    if ty==4: out+=struct.pack('<I',v)
    elif ty==6: out+=struct.pack('<f',v)
    elif ty==7: out+=struct.pack('<?',v)
    elif ty==8: out+=gs(v)
    elif ty==9:
        et,items=v; out+=struct.pack('<IQ',et,len(items))
        for it in items:
            out+= gs(it) if et==8 else struct.pack('<i',it)
    return out
def gguf(chat=True, extra_tensors=True):
    tokens=['<unk>','<s>','</s>','a','b','ab','\u0120','\u0120a','[',']','>','1','2']
    md=[('general.architecture',8,'llama'),('llama.block_count',4,1),('llama.context_length',4,64),
        ('llama.embedding_length',4,8),('llama.feed_forward_length',4,16),('llama.attention.head_count',4,2),
        ('llama.attention.head_count_kv',4,1),('llama.rope.dimension_count',4,4),('llama.rope.freq_base',6,10000.0),
        ('llama.attention.layer_norm_rms_epsilon',6,1e-5),('tokenizer.ggml.model',8,'gpt2'),
        ('tokenizer.ggml.tokens',9,(8,tokens)),('tokenizer.ggml.token_type',9,(5,[3,3,3]+[1]*(len(tokens)-3))),
        ('tokenizer.ggml.merges',9,(8,['a b','\u0120 a'])),('tokenizer.ggml.bos_token_id',4,1),
        ('tokenizer.ggml.eos_token_id',4,2),('tokenizer.ggml.padding_token_id',4,0),('tokenizer.ggml.add_bos_token',7,True)]
    if chat:
        md.append(('tokenizer.chat_template',8,"{{ bos_token }}{% for m in messages %}<{{ m['role'] }}>{{ m['content'] }}{{ eos_token }}{% endfor %}{% if add_generation_prompt %}<assistant>{% endif %}"))
    # (name, ggml dims (innermost first), type, bytes)
    V=len(tokens)
    ts=[('token_embd.weight',[8,V],0,4*8*V),('output_norm.weight',[8],0,32),('blk.0.attn_norm.weight',[8],0,32)]
    if extra_tensors:
        ts+=[('blk.0.attn_q.weight',[8,8],1,2*64),('blk.0.attn_k.weight',[8,4],1,2*32),('rope_freqs.weight',[2],0,8),
             ('blk.0.ffn_up.weight',[32,1],8,34)]
    out=b'GGUF'+struct.pack('<IQQ',3,len(ts),len(md))
    for k,ty,v in md: out+=kv(k,ty,v)
    off=0; infos=b''; datas=b''
    for name,dims,ty,nb in ts:
        infos+=gs(name)+struct.pack('<I',len(dims))+b''.join(struct.pack('<Q',d) for d in dims)+struct.pack('<IQ',ty,off)
        if ty==8: blob=struct.pack('<e',0.01)+bytes(range(32))
        elif ty==1: blob=b''.join(struct.pack('<e',0.1*(i%7)) for i in range(nb//2))
        else: blob=b''.join(struct.pack('<f',1.0+0.01*i) for i in range(nb//4))
        assert len(blob)==nb
        pad=(-nb)%32; datas+=blob+b'\0'*pad; off+=nb+pad
    out+=infos; out+=b'\0'*((-len(out))%32); out+=datas
    return out
g=gguf(); put('gguf','tiny-llama.gguf',g); put('gguf','tiny-llama-notemplate.gguf',gguf(False,False))
put('tokenizer_gguf','tiny-llama.gguf',g)
for f in ['tiny_gpt2.gguf','tiny_llama_merges.gguf','tiny_llama_scores.gguf']:
    cp('tokenizer_gguf',f,f'{G}/tokenizer/{f}')
cp('gguf','tiny_gpt2.gguf',f'{G}/tokenizer/tiny_gpt2.gguf')

# --- safetensors ---
def st(tensors, meta=None):
    hdr={}; data=b''
    if meta: hdr['__metadata__']=meta
    for name,dt,shape,blob in tensors:
        hdr[name]={'dtype':dt,'shape':shape,'data_offsets':[len(data),len(data)+len(blob)]}; data+=blob
    h=json.dumps(hdr,separators=(',',':')).encode(); h+=b' '*((-len(h))%8)
    return struct.pack('<Q',len(h))+h+data
f32=lambda n: b''.join(struct.pack('<f',0.5*i) for i in range(n))
f16=lambda n: b''.join(struct.pack('<e',0.25*i) for i in range(n))
put('safetensors','mixed.safetensors',st([('model.norm.weight','F32',[8],f32(8)),('model.layers.0.self_attn.q_proj.weight','F16',[4,32],f16(128)),
   ('model.embed_tokens.weight','BF16',[2,8],bytes(32)),('score.weight','F32',[1,256],f32(256))],{'format':'pt'}))
put('safetensors','int.safetensors',st([('ids','I64',[3],struct.pack('<3q',1,2,3)),('flags','BOOL',[2],b'\x01\x00'),('empty','F32',[0,4],b'')]))
cp('safetensors','adapter_model.safetensors',f'{G}/lora/seqcls-b/adapter_model.safetensors')

# --- configs ---
for m in sorted(os.listdir(f'{G}/models')): cp('config_json',f'{m}.json',f'{G}/models/{m}/config.json')
cp('config_json','tiny-seqcls.json',f'{G}/lora/tiny-seqcls/config.json')
for a in ['causal-lora','seqcls-a','seqcls-b']: cp('adapter_config',f'{a}.json',f'{G}/lora/{a}/adapter_config.json')

# --- tokenizer.json ---
cp('tokenizer_json','tiny-bf16.json',f'{G}/models/tiny-bf16/tokenizer.json')
cp('tokenizer_json','tiny_hf.json',f'{G}/tokenizer/tiny_hf/tokenizer.json')
cp('tokenizer_json','tiny_hf_llama2.json',f'{G}/tokenizer/tiny_hf_llama2/tokenizer.json')

# --- chat templates (first byte: flags) ---
tpl=[('tiny.jinja',open(f'{G}/models/tiny-bf16/chat_template.jinja').read()),
     ('tiny_hf.jinja',open(f'{G}/tokenizer/tiny_hf/chat_template.jinja').read()),
     ('llama31.jinja',open(f'{G}/tokenizer/llama31_chat_template.jinja').read()),
     ('llama32.jinja',open(f'{G}/tokenizer/llama32_chat_template.jinja').read())]
ct=json.load(open(f'{G}/tokenizer/chat_templates.json'))['templates']
items = ct.items() if isinstance(ct,dict) else enumerate(ct)
for k,v in [kv for kv in items if not (isinstance(kv[1],str) and kv[1].startswith('@'))][:8]:
    src = v if isinstance(v,str) else (v.get('template') or v.get('source') or json.dumps(v))
    tpl.append((f'golden-{k}.jinja',src))
for i,(n,s) in enumerate(tpl): put('chat_template',n,bytes([0x83 if i%2==0 else 0x07])+s.encode())

# --- permutations (first byte: window size | 0x80 for 0-based ids) ---
for i,(n,t) in enumerate([(3,'[2] > [1] > [3]'),(5,'<think>passage 4 answers it</think>\n[4] > [2] > [5] > [1] > [3]'),
        (4,'3 > 1 > 2 > 4'),(20,'[20] > [1] > [19] > [2] > [99999999999999999999999]'),(0x80|4,'[0] > [3] > [1] > [2]'),
        (10,'The ranking is: [10], [9], [8]. </think> [1] > [1] > [2]')]):
    put('permutation',f'p{i}.txt',bytes([n])+t.encode())

# --- corpus / queries / qrels / run ---
def lines(p,n,limit=600):
    out=[]
    for l in open(p,encoding='utf-8'):
        if len(out)>=n: break
        if len(l)>limit:
            d=json.loads(l); d['text']=d['text'][:300]; l=json.dumps(d,ensure_ascii=False)+'\n'
        out.append(l)
    return ''.join(out)
for ds in ['scifact','cisi','cranfield']:
    put('corpus',f'{ds}-corpus.jsonl',lines(f'{D}/{ds}/corpus.jsonl',4))
    put('corpus',f'{ds}-queries.jsonl',lines(f'{D}/{ds}/queries.jsonl',4))
    q=sorted(os.listdir(f'{D}/{ds}/qrels'))[0]
    put('qrels',f'{ds}-{q}',''.join(open(f'{D}/{ds}/qrels/{q}').readlines()[:12]))
put('corpus','passages.jsonl','{"text": "no id here"}\n\n{"id": 7, "title": "T", "text": "numeric id"}\n')
put('qrels','trec.qrels','1 0 31715818 1\n1 0 14717500 0\n3 Q0 13734012 2\n')
for r in ['cycle2/runs-scifact/scifact.first.trec','cycle2/runs-cisi/cisi.pointwise.trec']:
    p=f'{R}/eval-runs/{r}'
    if os.path.exists(p): put('run',os.path.basename(p),''.join(open(p).readlines()[:15]))
put('run','small.run','1 Q0 d1 1 12.5 bm25\n1 Q0 d2 2 11.0 bm25\n2 Q0 d1 1 -3e2 bm25\n')
tot=0
for t in sorted(os.listdir(S)):
    fs=os.listdir(f'{S}/{t}'); sz=sum(os.path.getsize(f'{S}/{t}/{f}') for f in fs); tot+=sz
    print(t,len(fs),sz)
print('total',tot)
