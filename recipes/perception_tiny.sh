# Stage 0 of the embedded model (see medr2/train/perception.py).
medr2 train-perception --out runs/perception --n_train 8000 --n_val 400 --train_seed 1 --val_seed 2 --minutes 14 --batch_size 32 --lr 1e-3 --focal_oversample 2
