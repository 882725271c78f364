# Aggregates an `ncu --csv --metrics gpu__time_duration.sum` report by kernel name: launches and
# total GPU time per kernel (largest first), then the first launches above 1 ms with their
# block and grid sizes. Usage: python3 bench/ncu_top.py report.csv
import csv,collections,sys
rows=list(csv.reader(open(sys.argv[1])))
hdr=None;agg=collections.defaultdict(lambda:[0,0.0]);seq=[]
for r in rows:
    if 'Kernel Name' in r and 'Metric Value' in r: hdr=r; continue
    if hdr is None or len(r)!=len(hdr): continue
    d=dict(zip(hdr,r))
    if d.get('Metric Name')!='gpu__time_duration.sum': continue
    ms=float(d['Metric Value'].replace(',',''))/1e6
    k=d['Kernel Name'][:60]; agg[k][0]+=1; agg[k][1]+=ms; seq.append((k,ms,d.get('Block Size'),d.get('Grid Size')))
tot=sum(v[1] for v in agg.values()); n=sum(v[0] for v in agg.values())
print('kernels',n,'total ms %.1f'%tot)
for k,(c,t) in sorted(agg.items(),key=lambda x:-x[1][1])[:14]: print('%8.2f ms %5d  %s'%(t,c,k))
big=[(i,s) for i,s in enumerate(seq) if s[1]>1.0]
for i,s in big[:20]: print(i,s)
