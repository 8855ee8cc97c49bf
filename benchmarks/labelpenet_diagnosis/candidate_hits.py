"""Usage: candidate_hits.py WORKDIR (a fit_short.py workdir). On the training scenes: do the classification module's object candidates R^c (top proposal per tag
by softmax(x^c), and alternatively by x^1 = x^c * w^p) hit an object of their class (IoU >= 0.5)?"""
import numpy as np, torch
torch.set_num_threads(1)
from pathlib import Path
from torchvision.ops import box_iou
from wsis.config import load_config
from wsis.data.synthetic import make_scenes
from wsis.data.images import load_image
from wsis.methods.labelpenet.config import LabelPENetConfig
from wsis.methods.labelpenet.model import LabelPENet, classification_scores
from wsis.methods.trained import load_weights
from wsis.methods.labelpenet.inference import _scaled
import sys
wd=Path(sys.argv[1])
tr=make_scenes(wd/"data/train",num_images=16,seed=0,image_size=(128,128))
cat=sorted(tr.categories)
cfg=load_config(LabelPENetConfig,"wsis/configs/demo_labelpenet.yaml",[])
net=LabelPENet(cfg.model,len(cat))
load_weights(net.classification, wd/"classification/model.pt")
net.eval()
cache=cfg.proposals.cache(wd)
hits={"xc":0,"x1":0,"best_possible":0}
n=0
for r in tr:
    img=load_image(r.path)
    small,x,scale=_scaled(cfg,img,cfg.calibration.test_size,torch.device("cpu"))
    P=cfg.proposals.get(cache,r.path).boxes
    with torch.no_grad():
        out=net.classification_outputs([x],[torch.as_tensor(P*scale,dtype=torch.float32)])
        x1,_=classification_scores(out["xc"],out["xp"],out["segments"],1)
    sm=out["xc"].softmax(1)
    g=torch.as_tensor(np.asarray(r.gt.boxes),dtype=torch.float32).reshape(-1,4)
    gl=np.asarray(r.gt.labels)
    iou=box_iou(torch.as_tensor(P,dtype=torch.float32),g)
    for c in set(gl.tolist()):
        k=cat.index(c)
        m=torch.as_tensor(gl==c)
        n+=1
        for name,s in (("xc",sm[:,k]),("x1",x1[:,k])):
            hits[name]+=int(iou[int(s.argmax()),m].max()>=0.5)
        hits["best_possible"]+=int(iou[:,m].max()>=0.5)
print("tags",n,hits)
# the calibrated candidates the detection module is trained on (boxes of the CRF masks)
from wsis.methods.labelpenet.data import SupervisionStore
st=SupervisionStore(wd/"classification/outputs")
ok=k=0
ws=[]
for r in tr:
    c=st.load(r.image_id)
    ws+=list(c.weights)
    g=torch.as_tensor(np.asarray(r.gt.boxes),dtype=torch.float32).reshape(-1,4)
    gl=np.asarray(r.gt.labels)
    for b,l in zip(c.boxes,c.labels):
        k+=1
        m=torch.as_tensor(gl==cat[l])
        ok+=int(bool(m.any()) and float(box_iou(torch.as_tensor(b[None]),g[m]).max())>=0.5)
print("calibrated candidates",k,"hit",ok,"mean weight",float(np.mean(ws)))
