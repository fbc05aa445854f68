#!/usr/bin/env python3
# Prints (hex) the hand-built SPS used by the h264 tests: High 4:4:4 (profile 244), 170x100 with
# 4:4:4 crop units, all 12 SPS scaling lists (absent / explicit / use-default / early end) and a VUI
# with extended SAR, overscan, colour description and chroma loc before timing (1001/60000).
# Verified by splicing it over the SPS of tests/data/ffmpeg_h264high444_cqmcustom_170x100.h264:
# ffprobe reports 170x100, SAR 4:3, r_frame_rate 30000/1001, and `-bsf:v trace_headers` parses
# every list and the whole VUI without error.
import sys
bits=[]
def u(n,v):
    for i in range(n-1,-1,-1): bits.append((v>>i)&1)
def ue(v):
    v+=1; n=v.bit_length(); u(n-1,0); u(n,v)
def se(v):
    ue(2*v-1 if v>0 else -2*v)
u(8,0x67); u(8,244); u(8,0); u(8,11); ue(0)
ue(3); u(1,0); ue(0); ue(0); u(1,0)
u(1,1) # seq_scaling_matrix_present_flag
# 12 lists (chroma_format_idc 3): mix of absent, explicit, use-default, early-terminated.
def slist(size, deltas):
    u(1,1)
    last=8; nxt=8
    k=0
    for j in range(size):
        if nxt!=0:
            d=deltas[k] if k<len(deltas) else 0; k+=1
            se(d); nxt=(last+d+256)%256
        last = last if nxt==0 else nxt
plans=[ ('abs',), ('exp',16,[8]+[1,-1,2,-2,3,-3,4,-4,5,-5,6,-6,7,-7,8]), ('def',16), ('abs',), ('early',16,[5,5,-18]),
        ('exp',16,[100,-50]+[0]*14), ('exp',64,[i%7-3 for i in range(64)]), ('def',64), ('abs',), ('exp',64,[-8]),
        ('early',64,[20,30,-58]), ('exp',64,[1]*64) ]
for p in plans:
    if p[0]=='abs': u(1,0)
    elif p[0]=='def': slist(p[1],[-8])  # nextScale 0 at j=0 => useDefaultScalingMatrixFlag
    else: slist(p[1],p[2])
ue(0); ue(2); ue(1); u(1,0); ue(10); ue(6); u(1,1); u(1,1)
u(1,1); ue(0); ue(6); ue(0); ue(12)
u(1,1) # vui
u(1,1); u(8,255); u(16,4); u(16,3)   # aspect ratio: Extended_SAR 4:3
u(1,1); u(1,1)                       # overscan present, appropriate
u(1,1); u(3,5); u(1,1); u(1,1); u(8,1); u(8,1); u(8,1)  # video signal type + colour description
u(1,1); ue(1); ue(1)                 # chroma loc
u(1,1); u(32,1001); u(32,60000); u(1,1)  # timing, fixed_frame_rate
u(1,0); u(1,0); u(1,0); u(1,0)       # no hrd, no pic_struct, no bitstream_restriction
u(1,1)
while len(bits)%8: bits.append(0)
raw=bytes(int(''.join(map(str,bits[i:i+8])),2) for i in range(0,len(bits),8))
out=bytearray(); z=0
for b in raw:
    if z>=2 and b<=3: out.append(3); z=0
    out.append(b); z = z+1 if b==0 else 0
sys.stdout.write(out.hex())
